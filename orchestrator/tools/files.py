"""`file_scan`: find documents in a folder on disk by name or content (a local, single-person deployment).

People's own documents are read through their connected drives instead (`orchestrator/tools/drives.py`:
`file_search` and `file_read`), which replace this tool wherever the integrations service is configured.
Every scan is bounded: files visited, bytes read per file, and results.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from orchestrator.tools.registry import Tool, ToolContext, string_argument

NAME = "file_scan"
SNIPPET_CHARS = 160


@dataclass(frozen=True, slots=True)
class FileMatch:
    path: str
    """Relative to the provider's root."""
    snippet: str
    """Text around the first match in the content; empty when only the name matched."""


class FileProvider(Protocol):
    async def search(self, user_id: str, query: str, limit: int) -> list[FileMatch]: ...


class LocalFolderFiles:
    """Files under `folder` (hidden files and folders skipped, symlinks not followed), matching `query` in
    their name or in their first `max_file_bytes` bytes of UTF-8 text, case-insensitively."""

    def __init__(self, folder: Path, *, max_files: int = 2000, max_file_bytes: int = 256 * 1024) -> None:
        self._folder = folder
        self._max_files = max_files
        self._max_file_bytes = max_file_bytes

    async def search(self, user_id: str, query: str, limit: int) -> list[FileMatch]:
        return await asyncio.to_thread(self._search, query.casefold(), limit)

    def _search(self, needle: str, limit: int) -> list[FileMatch]:
        matches: list[FileMatch] = []
        visited = 0
        for directory, folders, files in os.walk(self._folder):
            folders[:] = sorted(name for name in folders if not name.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                visited += 1
                if visited > self._max_files or len(matches) >= limit:
                    return matches
                path = Path(directory, name)
                if path.is_symlink() or not path.is_file():
                    continue
                relative = path.relative_to(self._folder).as_posix()
                snippet = self._snippet(path, needle)
                if snippet is not None or needle in relative.casefold():
                    matches.append(FileMatch(relative, snippet or ""))
        return matches

    def _snippet(self, path: Path, needle: str) -> str | None:
        with path.open("rb") as handle:
            head = handle.read(self._max_file_bytes)
        if b"\x00" in head[:1024]:
            return None  # binary
        text = head.decode("utf-8", errors="replace")
        at = text.casefold().find(needle)
        if at < 0:
            return None
        begin = max(0, at - SNIPPET_CHARS // 2)
        return " ".join(text[begin : begin + SNIPPET_CHARS].split())


def files_tool(provider: FileProvider, *, limit: int = 10) -> Tool:
    async def scan(arguments: dict[str, Any], context: ToolContext) -> Any:
        matches = await provider.search(context.user_id, string_argument(arguments, "query"), limit)
        return {"matches": [{"path": match.path, "snippet": match.snippet} for match in matches]}

    return Tool(
        NAME,
        "Find the user's files whose name or text contains the query; returns paths and a snippet.",
        {
            "type": "object",
            "properties": {"query": {"type": "string", "minLength": 2, "maxLength": 200}},
            "required": ["query"],
            "additionalProperties": False,
        },
        scan,
    )
