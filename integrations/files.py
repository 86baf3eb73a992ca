"""A person's documents in every connected drive: Google Drive (v3: `files.list` with a full-text query;
Google Docs exported as plain text, text files downloaded) and OneDrive (Microsoft Graph: drive search, item
content through its pre-authenticated download URL), for the `file_search` and `file_read` tools.

Reading is bounded (`max_chars`, and four bytes a character downloaded at most) and limited to what reads as
text: Google Docs, and text, Markdown, CSV and JSON files. Anything else is named with its type so the
person knows why it was not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from integrations.connections import Connection, Connections
from integrations.provider_api import Failed, Problem, ProviderApi
from integrations.providers import Capability, Provider
from mesh.errors import FailedPrecondition, InvalidArgument, NotFound

GOOGLE_DOC = "application/vnd.google-apps.document"
TEXT_TYPES = frozenset({"application/json", "application/csv", "application/xml"})
MAX_RESULTS = 25
EARLIEST = datetime.min.replace(tzinfo=UTC)


def _readable(mime_type: str) -> bool:
    return mime_type.startswith("text/") or mime_type in TEXT_TYPES


@dataclass(frozen=True, slots=True)
class FileHit:
    provider: Provider
    id: str
    name: str
    mime_type: str
    modified_at: datetime | None
    link: str


@dataclass(frozen=True, slots=True)
class FileSearch:
    files: list[FileHit]
    sources: list[Provider]
    problems: list[Problem]


@dataclass(frozen=True, slots=True)
class FileText:
    provider: Provider
    id: str
    name: str
    mime_type: str
    text: str
    truncated: bool


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _drive_literal(text: str) -> str:
    """`text` as a string literal of Drive's query language (backslash-escaped quotes and backslashes)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _odata_literal(text: str) -> str:
    """`text` as an OData string literal (quotes doubled)."""
    return "'" + text.replace("'", "''") + "'"


class Files:
    def __init__(
        self,
        connections: Connections,
        http: httpx.AsyncClient,
        *,
        drive_url: str = "https://www.googleapis.com/drive/v3",
        graph_url: str = "https://graph.microsoft.com/v1.0",
    ) -> None:
        self._connections = connections
        self._api = ProviderApi(connections, http)
        self._drive = drive_url.rstrip("/")
        self._graph = graph_url.rstrip("/")

    async def search(self, user_id: str, query: str, limit: int) -> FileSearch:
        query = query.strip()
        if not query:
            raise InvalidArgument("query", "must not be blank")
        limit = max(1, min(limit or 10, MAX_RESULTS))
        searches = {Provider.GOOGLE: self._google_search, Provider.MICROSOFT: self._graph_search}

        async def found_in(connection: Connection, token: str) -> list[FileHit]:
            return await searches[connection.provider](token, query, limit)

        read = await self._api.read_each(await self._connections.holding(user_id, Capability.FILES), found_in)
        hits = sorted(
            (hit for _, found in read.answers for hit in found),
            key=lambda hit: hit.modified_at or EARLIEST,
            reverse=True,  # newest first
        )
        return FileSearch(hits[:limit], read.sources, read.problems)

    async def read(self, user_id: str, provider: Provider, file_id: str, max_chars: int) -> FileText:
        held = await self._connections.holding(user_id, Capability.FILES)
        connection = next((c for c in held if c.provider is provider), None)
        if connection is None:
            raise NotFound(f"no {provider.display_name} drive is connected")
        reader = self._google_read if provider is Provider.GOOGLE else self._graph_read
        outcome = await self._api.read(connection, lambda token: reader(token, file_id, max_chars))
        if isinstance(outcome, Problem):
            raise FailedPrecondition(outcome.message)
        return outcome

    async def _google_search(self, token: str, query: str, limit: int) -> list[FileHit]:
        listed = await self._api.get_json(
            "GET",
            f"{self._drive}/files",
            token,
            Provider.GOOGLE,
            params={
                "q": f"fullText contains {_drive_literal(query)} and trashed = false",
                "pageSize": str(limit),
                "fields": "files(id,name,mimeType,modifiedTime,webViewLink)",
            },
        )
        return [
            FileHit(
                Provider.GOOGLE,
                str(item["id"]),
                str(item.get("name", "")),
                str(item.get("mimeType", "")),
                _moment(item.get("modifiedTime")),
                str(item.get("webViewLink", "")),
            )
            for item in listed.get("files", [])
        ]

    async def _graph_search(self, token: str, query: str, limit: int) -> list[FileHit]:
        found = await self._api.get_json(
            "GET",
            f"{self._graph}/me/drive/root/search(q={quote(_odata_literal(query), safe='')})",
            token,
            Provider.MICROSOFT,
            params={"$top": str(limit)},
        )
        return [
            FileHit(
                Provider.MICROSOFT,
                str(item["id"]),
                str(item.get("name", "")),
                str((item.get("file") or {}).get("mimeType", "")),
                _moment(item.get("lastModifiedDateTime")),
                str(item.get("webUrl", "")),
            )
            for item in found.get("value", [])
            if "folder" not in item
        ]

    async def _google_read(self, token: str, file_id: str, max_chars: int) -> FileText:
        base = f"{self._drive}/files/{quote(file_id, safe='')}"
        meta = await self._api.get_json(
            "GET", base, token, Provider.GOOGLE, params={"fields": "id,name,mimeType"}
        )
        name, mime_type = str(meta.get("name", "")), str(meta.get("mimeType", ""))
        if mime_type == GOOGLE_DOC:
            response = await self._api.request(
                "GET", f"{base}/export", token, Provider.GOOGLE, params={"mimeType": "text/plain"}
            )
        elif _readable(mime_type):
            response = await self._api.request("GET", base, token, Provider.GOOGLE, params={"alt": "media"})
        else:
            raise Failed(f"{name} is of type {mime_type}, which cannot be read as text yet")
        return _text(Provider.GOOGLE, file_id, name, mime_type, response.content, max_chars)

    async def _graph_read(self, token: str, file_id: str, max_chars: int) -> FileText:
        item = await self._api.get_json(
            "GET", f"{self._graph}/me/drive/items/{quote(file_id, safe='')}", token, Provider.MICROSOFT
        )
        name = str(item.get("name", ""))
        mime_type = str((item.get("file") or {}).get("mimeType", ""))
        if not _readable(mime_type):
            raise Failed(f"{name} is of type {mime_type or 'folder'}, which cannot be read as text yet")
        url = item.get("@microsoft.graph.downloadUrl")
        if not isinstance(url, str):
            raise Failed(f"Microsoft gave no download address for {name}")
        content = await self._api.download(url, limit=4 * max_chars + 4)
        return _text(Provider.MICROSOFT, file_id, name, mime_type, content, max_chars)


def _text(
    provider: Provider, file_id: str, name: str, mime_type: str, content: bytes, max_chars: int
) -> FileText:
    text = content.decode("utf-8", errors="replace")
    return FileText(provider, file_id, name, mime_type, text[:max_chars], len(text) > max_chars)
