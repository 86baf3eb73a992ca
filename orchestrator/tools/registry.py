"""Tools the model may call: their JSON Schemas, and running a call safely.

A call never crashes a turn: unknown tools, arguments that are not JSON or break the schema, errors of
the tool itself and timeouts all become a result with `is_error` set, which the model sees and can
react to. Only cancellation passes through.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jsonschema import Draft202012Validator

from mesh.errors import AthenaError
from orchestrator.metrics import TOOL_DURATION, TOOL_ERRORS
from orchestrator.model import ToolSpec
from orchestrator.ports import MemoryGateway

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool call runs with."""

    user_id: str
    """The caller (from the verified token): providers with per-user accounts pick the account by it."""
    agent_id: str
    """The agent calling the tool (agent-scoped memories belong to it)."""
    memory: MemoryGateway
    now: Callable[[], datetime] = field(default=_utc_now)
    conversation_id: str = ""
    """The conversation of the turn ("" outside one): tools that remember what a conversation used say it."""


Handler = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]
"""Runs a call with validated arguments; returns anything JSON-serialisable, raises `AthenaError` to
report a failure in words the model may see."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    """JSON Schema of the arguments object (draft 2020-12)."""
    handler: Handler

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    result_json: str
    """What the model sees, as JSON; failures are `{"error": "<message>"}`."""
    is_error: bool = False


def error_outcome(message: str) -> ToolOutcome:
    return ToolOutcome(json.dumps({"error": message}, ensure_ascii=False), is_error=True)


class ToolRegistry:
    """The tools offered to every agent, validated and run by name."""

    def __init__(self, tools: Iterable[Tool], *, timeout: float = 15.0) -> None:
        self._tools = {tool.name: tool for tool in tools}
        self._validators: dict[str, Draft202012Validator] = {}
        for tool in self._tools.values():
            Draft202012Validator.check_schema(tool.parameters)
            self._validators[tool.name] = Draft202012Validator(tool.parameters)
        # Made once: a spec encodes its schema as it is made, and every model call offers every tool.
        self._specs = tuple(tool.spec for tool in self._tools.values())
        self._timeout = timeout

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._tools)

    def specs(self) -> tuple[ToolSpec, ...]:
        return self._specs

    async def run(self, name: str, arguments_json: str, context: ToolContext) -> ToolOutcome:
        """The call's outcome; its duration and failures are counted by tool (`orchestrator.metrics`)."""
        started = time.perf_counter()
        reason, outcome = await self._run(name, arguments_json, context)
        tool = name if name in self._tools else "unknown"  # the model may make names up: bounded labels
        TOOL_DURATION.labels(tool).observe(time.perf_counter() - started)
        if reason:
            TOOL_ERRORS.labels(tool, reason).inc()
        return outcome

    async def _run(self, name: str, arguments_json: str, context: ToolContext) -> tuple[str, ToolOutcome]:
        """Why the call failed ("" when it did not), and its outcome."""
        tool = self._tools.get(name)
        if tool is None:
            return "unknown_tool", error_outcome(f"unknown tool {name!r}")
        try:
            arguments = json.loads(arguments_json or "{}")
        except ValueError:
            return "invalid_arguments", error_outcome("the arguments are not valid JSON")
        if not isinstance(arguments, dict):
            return "invalid_arguments", error_outcome("the arguments must be a JSON object")
        problems = sorted(self._validators[name].iter_errors(arguments), key=lambda error: list(error.path))
        if problems:
            return "invalid_arguments", error_outcome(
                "invalid arguments: " + "; ".join(_describe(problem) for problem in problems[:3])
            )
        try:
            async with asyncio.timeout(self._timeout):
                result = await tool.handler(arguments, context)
        except TimeoutError:
            return "timeout", error_outcome(f"{name} took too long and was stopped")
        except AthenaError as exc:
            return "error", error_outcome(exc.message)
        except Exception:  # a broken tool must not end the turn: the model is told, the log keeps the trace
            log.exception("tool failed", extra={"tool": name})
            return "crashed", error_outcome(f"{name} failed unexpectedly")
        return "", ToolOutcome(json.dumps(result, ensure_ascii=False, default=str))


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error.path)
    return f"{where}: {error.message}" if where else str(error.message)


def string_argument(arguments: Mapping[str, Any], name: str) -> str:
    """A string argument the schema guarantees, stripped."""
    return str(arguments[name]).strip()
