"""What tools reading a person's connected accounts share: a source (a calendar, a drive) that could not
answer, and how a result tells the model about it.

Sources that answered give the result; those that could not are listed under `unavailable` with a
sentence for the person (say, "connect Google again"); when none could, the call is an error the model
explains; with nothing connected at all, a `note` says how to connect something.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mesh.errors import FailedPrecondition


@dataclass(frozen=True, slots=True)
class SourceProblem:
    """A connected source that could not answer."""

    source: str
    needs_reconnect: bool
    message: str
    """A sentence for the person."""


def with_sources(
    result: dict[str, Any],
    sources: Sequence[str],
    problems: Sequence[SourceProblem],
    *,
    kind: str,
    none_connected: str,
) -> dict[str, Any]:
    """`result` with what the model should know of its sources (module docstring); `kind` names a source
    in `unavailable` ("calendar", "drive"). Raises `FailedPrecondition` when no source answered."""
    if problems and not sources:
        raise FailedPrecondition(" ".join(problem.message for problem in problems))
    if problems:
        result["unavailable"] = [
            {kind: p.source, "needs_reconnect": p.needs_reconnect, "message": p.message} for p in problems
        ]
    if not sources and not problems:
        result["note"] = none_connected
    return result


def complete(result: dict[str, Any]) -> bool:
    """Whether every source answered and there was one (a result worth caching)."""
    return "unavailable" not in result and "note" not in result
