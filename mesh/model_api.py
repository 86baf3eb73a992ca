"""OpenAI-compatible HTTP APIs (Chat Completions, embeddings: OpenAI, vLLM, Ollama, the offline model) over
aiohttp: one way to send a request to a model and to tell its failures apart.

The mesh sends wire-format JSON bodies and reads the answers itself (`orchestrator/model.py` parses the
event stream, `memory/embeddings.py` decodes base64 vectors), so of the official SDK only the request
machinery was left in use — and it cost about 0.3 ms of CPU per request over aiohttp's own (a request
to the offline model's /embeddings: 472-576 µs through the SDK's `post`, 168-176 µs through aiohttp,
server included), on two requests of every chat turn. What remains is small: the base URL, the bearer
key, timeouts, and the status classified once (`ModelApiError`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from mesh.genai import server_attributes
from mesh.telemetry import outgoing_trace_context


class ModelApiError(Exception):
    """A request the model API did not answer successfully."""


class ModelApiUnreachable(ModelApiError):
    """The connection failed, or broke while the answer was read."""


class ModelApiTimeout(ModelApiError):
    """No answer (or no next part of a streamed answer) within the request's timeout."""


class ModelApiStatus(ModelApiError):
    """An HTTP error status; the body is never kept (it may echo what was sent)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class ModelApi:
    """Requests to one OpenAI-compatible API at `base_url` (for example "https://api.openai.com/v1")."""

    def __init__(self, base_url: str, api_key: str, session: aiohttp.ClientSession) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._session = session
        self.server = server_attributes(self._base_url)
        """server.address and server.port, for the spans of calls to this API (`mesh.genai`)."""

    @asynccontextmanager
    async def post(
        self, path: str, body: dict[str, Any] | str, *, read_timeout: float | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response to a POST of `body` (or its JSON) to `path` ("/chat/completions"), unread: the block
        reads it. `read_timeout` bounds connecting, the wait for the answer to start and every wait for
        more of it (not the whole answer: a stream lasts as long as the model writes). Raises a
        `ModelApiError`, for an error status too; failures while the block reads the body are translated
        the same way."""
        limits = aiohttp.ClientTimeout(total=None, sock_connect=read_timeout, sock_read=read_timeout)
        # The call's span (`mesh.genai`: the GenAI conventions' CLIENT span of this request) goes along.
        traced = outgoing_trace_context()
        headers = {**self._headers, **dict(traced)} if traced else self._headers
        try:
            async with self._session.post(
                self._base_url + path,
                data=body if isinstance(body, str) else json.dumps(body),
                headers=headers,
                timeout=limits,
            ) as response:
                if response.status >= 400:
                    raise ModelApiStatus(response.status)
                yield response
        except TimeoutError as exc:
            raise ModelApiTimeout("the model API did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise ModelApiUnreachable("the model API is unreachable") from exc


def client_session(*, connections: int = 4096) -> aiohttp.ClientSession:
    """A session keeping up to `connections` connections (one per answer streaming at once), idle ones for
    a minute. aiohttp's pool finds a free connection in constant time, where httpx's scans them all."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, keepalive_timeout=60)
    return aiohttp.ClientSession(connector=connector, raise_for_status=False)


async def wait_closed(session: aiohttp.ClientSession) -> None:
    """Closes `session` and gives its connections a moment to close (aiohttp's documented graceful close)."""
    await session.close()
    await asyncio.sleep(0)
