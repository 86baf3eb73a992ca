"""`file_search` and `file_read`: the person's documents in every drive they connected (Google Drive,
OneDrive), through the integrations service (`ConnectedDrives`, orchestrator/integrations_client.py).

A drive that cannot answer a search is reported to the model as `orchestrator.tools.sources` says.
Reading answers a document's text, bounded, or an error saying why it cannot be read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from orchestrator.tools.registry import Tool, ToolContext, string_argument
from orchestrator.tools.sources import SourceProblem, with_sources

SEARCH = "file_search"
READ = "file_read"
READ_CHARS = 20_000
NO_DRIVE = "No drive is connected: the person can connect Google Drive or OneDrive under Connections."


@dataclass(frozen=True, slots=True)
class DriveFile:
    source: str
    id: str
    name: str
    mime_type: str
    modified_at: datetime | None
    link: str


@dataclass(frozen=True, slots=True)
class DriveSearch:
    files: list[DriveFile]
    sources: list[str]
    problems: list[SourceProblem] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DriveText:
    file: DriveFile
    text: str
    truncated: bool


class Drives(Protocol):
    async def search(self, query: str, limit: int, conversation_id: str = "") -> DriveSearch:
        """Files matching `query`; `conversation_id` as for `read`."""
        ...

    async def read(self, source: str, file_id: str, max_chars: int, conversation_id: str = "") -> DriveText:
        """The file's text; `conversation_id` names the conversation reading it (remembered by the
        integrations service, so that the business assistant can say when the file changes)."""
        ...


def _file(found: DriveFile) -> dict[str, Any]:
    described: dict[str, Any] = {
        "source": found.source,
        "id": found.id,
        "name": found.name,
        "type": found.mime_type,
        "link": found.link,
    }
    if found.modified_at is not None:
        described["modified"] = found.modified_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return described


def drive_tools(drives: Drives, *, limit: int = 10) -> list[Tool]:
    async def search(arguments: dict[str, Any], context: ToolContext) -> Any:
        found = await drives.search(string_argument(arguments, "query"), limit, context.conversation_id)
        result: dict[str, Any] = {"files": [_file(f) for f in found.files], "drives": found.sources}
        return with_sources(result, found.sources, found.problems, kind="drive", none_connected=NO_DRIVE)

    async def read(arguments: dict[str, Any], context: ToolContext) -> Any:
        read = await drives.read(
            string_argument(arguments, "source"),
            string_argument(arguments, "file_id"),
            READ_CHARS,
            context.conversation_id,
        )
        return {**_file(read.file), "text": read.text, "truncated": read.truncated}

    return [
        Tool(
            SEARCH,
            "Find the user's documents in their connected drives (Google Drive, OneDrive) whose name or text "
            "contains the query; returns each file's source, id, name, type, last change and link.",
            {
                "type": "object",
                "properties": {"query": {"type": "string", "minLength": 2, "maxLength": 200}},
                "required": ["query"],
                "additionalProperties": False,
            },
            search,
        ),
        Tool(
            READ,
            "The text of one document found by file_search (its source and id), up to 20,000 characters.",
            {
                "type": "object",
                "properties": {
                    "source": {"type": "string", "enum": ["google", "microsoft"]},
                    "file_id": {"type": "string", "minLength": 1, "maxLength": 512},
                },
                "required": ["source", "file_id"],
                "additionalProperties": False,
            },
            read,
        ),
    ]
