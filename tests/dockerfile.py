"""The repository's Dockerfile read as text, for tests that need no Docker engine: its stages in order,
each with its instructions (continuation lines joined, comments and blank lines left out)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


@dataclass(frozen=True)
class Stage:
    name: str | None
    """`AS <name>`, if any."""
    base: str
    """The image (or stage) after FROM, as written."""
    instructions: list[str]
    """Every instruction of the stage, FROM first."""

    def lines(self, keyword: str) -> list[str]:
        """The instructions starting with `keyword` (e.g. "COPY"), without it."""
        prefix = keyword.upper() + " "
        return [line[len(prefix) :] for line in self.instructions if line.upper().startswith(prefix)]


def instructions(path: Path = DOCKERFILE) -> list[str]:
    """Every instruction in order: continuation lines joined, comments and blank lines left out."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return lines


def global_arguments(path: Path = DOCKERFILE) -> dict[str, str]:
    """The ARGs before the first FROM (those FROM lines may use), with their defaults."""
    found: dict[str, str] = {}
    for line in instructions(path):
        if line.upper().startswith("FROM "):
            break
        name, _, default = line.split(maxsplit=1)[1].partition("=")
        found[name] = default
    return found


def stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The stages in order; the last is what `docker build` builds without `--target`."""
    found: list[Stage] = []
    for line in instructions(path):
        start = re.fullmatch(
            r"FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", line, flags=re.IGNORECASE
        )
        if start:
            found.append(Stage(name=start[2], base=start[1], instructions=[]))
        if found:
            found[-1].instructions.append(line)
    return found


def stage(name: str, path: Path = DOCKERFILE) -> Stage:
    (found,) = [item for item in stages(path) if item.name == name]
    return found
