"""A person's documents in every connected drive: Google Drive (v3: `files.list` with a full-text query;
Google Docs exported as plain text, text files downloaded) and OneDrive (Microsoft Graph: drive search, item
content through its pre-authenticated download URL), for the `file_search` and `file_read` tools.

Reading is bounded (`max_chars`, and four bytes a character downloaded at most; PDFs up to `MAX_PDF_BYTES`)
and limited to what reads as text: Google Docs, text, Markdown, CSV and JSON files, and PDFs with a text
layer (pypdf, off the event loop; a scan without text, a damaged or password-protected PDF is named as
such). Anything else is named with its type so the person knows why it was not read.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from pypdf import PdfReader
from pypdf.errors import PdfReadError

from integrations.connections import Connection, Connections
from integrations.provider_api import Failed, Problem, ProviderApi
from integrations.providers import Capability, Provider
from mesh.errors import FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger(__name__)

GOOGLE_DOC = "application/vnd.google-apps.document"
PDF = "application/pdf"
MAX_PDF_BYTES = 20 * 1024 * 1024
"""A larger PDF is not read (its text would be cut at `max_chars` anyway)."""
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


class References(Protocol):
    """Where the files conversations read are remembered (integrations/file_references.py)."""

    async def remember(
        self, user_id: str, conversation_id: str, at: datetime, files: Sequence[tuple[Provider, str, str]]
    ) -> None:
        """`files` (provider, id, name) referred to by the conversation, at `at`."""
        ...


class Files:
    def __init__(
        self,
        connections: Connections,
        http: httpx.AsyncClient,
        *,
        drive_url: str = "https://www.googleapis.com/drive/v3",
        graph_url: str = "https://graph.microsoft.com/v1.0",
        references: References | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._references = references
        self._clock = clock
        self._connections = connections
        self._api = ProviderApi(connections, http)
        self._drive = drive_url.rstrip("/")
        self._graph = graph_url.rstrip("/")

    async def search(self, user_id: str, query: str, limit: int, conversation_id: str = "") -> FileSearch:
        """The files matching `query`, newest first; found for `conversation_id`, each is remembered as one
        it referred to (the answer names them)."""
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
        found = hits[:limit]
        if conversation_id and found and self._references is not None:
            named = [(hit.provider, hit.id, hit.name) for hit in found]
            await self._references.remember(user_id, conversation_id, self._clock(), named)
        return FileSearch(found, read.sources, read.problems)

    async def read(
        self, user_id: str, provider: Provider, file_id: str, max_chars: int, conversation_id: str = ""
    ) -> FileText:
        """The file's text; read for `conversation_id`, the file is remembered as one it referred to."""
        held = await self._connections.holding(user_id, Capability.FILES)
        connection = next((c for c in held if c.provider is provider), None)
        if connection is None:
            raise NotFound(f"no {provider.display_name} drive is connected")
        reader = self._google_read if provider is Provider.GOOGLE else self._graph_read
        outcome = await self._api.read(connection, lambda token: reader(token, file_id, max_chars))
        if isinstance(outcome, Problem):
            raise FailedPrecondition(outcome.message)
        if conversation_id and self._references is not None:
            named = [(provider, file_id, outcome.name)]
            await self._references.remember(user_id, conversation_id, self._clock(), named)
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
            "GET", base, token, Provider.GOOGLE, params={"fields": "id,name,mimeType,size"}
        )
        name, mime_type = str(meta.get("name", "")), str(meta.get("mimeType", ""))
        if mime_type == PDF:
            _check_pdf_size(name, int(meta.get("size") or 0))
            response = await self._api.request("GET", base, token, Provider.GOOGLE, params={"alt": "media"})
            return await _pdf_text(Provider.GOOGLE, file_id, name, response.content, max_chars)
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
        if mime_type == PDF:
            _check_pdf_size(name, int(item.get("size") or 0))
            url = item.get("@microsoft.graph.downloadUrl")
            if not isinstance(url, str):
                raise Failed(f"Microsoft gave no download address for {name}")
            content = await self._api.download(url, limit=MAX_PDF_BYTES + 1)
            _check_pdf_size(name, len(content))
            return await _pdf_text(Provider.MICROSOFT, file_id, name, content, max_chars)
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


def _check_pdf_size(name: str, size: int) -> None:
    if size > MAX_PDF_BYTES:
        raise Failed(
            f"{name} is a PDF of {size / 2**20:.0f} MB, larger than the {MAX_PDF_BYTES // 2**20} MB read"
        )


def _pdf_pages(content: bytes, max_chars: int) -> tuple[str, bool]:
    """The text of a PDF's pages, in order, until `max_chars` characters (pypdf's layout-free extraction)."""
    reader = PdfReader(io.BytesIO(content))
    if reader.is_encrypted:
        raise Failed("the PDF is password-protected")
    pages: list[str] = []
    length = 0
    for page in reader.pages:
        text = page.extract_text() or ""
        pages.append(text)
        length += len(text) + 2
        if length > max_chars:
            break
    text = "\n\n".join(part.strip() for part in pages if part.strip())
    return text[:max_chars], len(text) > max_chars or len(pages) < len(reader.pages)


async def _pdf_text(provider: Provider, file_id: str, name: str, content: bytes, max_chars: int) -> FileText:
    try:
        text, truncated = await asyncio.to_thread(_pdf_pages, content, max_chars)
    except Failed as failed:
        raise Failed(f"{name}: {failed.message}") from None
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        log.info("a PDF did not read", extra={"error": type(exc).__name__})
        raise Failed(f"{name} is a PDF that cannot be read (it may be damaged)") from None
    if not text:
        raise Failed(f"{name} is a PDF without text (a scan, perhaps), which cannot be read yet")
    return FileText(provider, file_id, name, PDF, text, truncated)
