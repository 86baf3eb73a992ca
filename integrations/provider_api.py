"""How the integrations service calls a provider's API for a person, whatever it reads (calendars, files).

`ProviderApi.read` runs a reader with a current access token of the person's connection. An API that
answers 401 (or 403, a scope missing) gets one refreshed token and one more try; when that fails too, the
grant no longer serves and the connection is marked NEEDS_RECONNECT. A 429 asking to wait at most
`MAX_THROTTLE_WAIT_SECONDS` is waited out once, within the caller's deadline. Whatever the provider cannot
answer becomes a `Problem` with a sentence for the person, so that the other providers still answer.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from integrations.connections import Connection, Connections
from integrations.providers import Provider
from mesh.context import time_remaining
from mesh.errors import AthenaError, FailedPrecondition

T = TypeVar("T")

MAX_THROTTLE_WAIT_SECONDS = 2.0
"""A 429 asking to wait at most this long is waited out (once) within the caller's deadline."""


@dataclass(frozen=True, slots=True)
class Problem:
    """A provider that could not answer for the person."""

    provider: Provider
    needs_reconnect: bool
    message: str


class Refused(Exception):
    """The provider refused the token (401) or the scope (403)."""


class Failed(Exception):
    """The provider could not answer now; `message` says why, for the person."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def retry_after(response: httpx.Response) -> float | None:
    """Seconds a 429 asks to wait (`Retry-After` in seconds); None for another status or no such header."""
    if response.status_code != 429:
        return None
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None


def _time_left(wait: float) -> bool:
    """Whether the caller's deadline leaves time to wait `wait` seconds and ask again."""
    remaining = time_remaining()
    return remaining is None or remaining > wait + 1.0


@dataclass(frozen=True, slots=True)
class Gathered(Generic[T]):
    """What each connection answered, and the problems of those that could not."""

    answers: list[tuple[Provider, T]]
    problems: list[Problem]

    @property
    def sources(self) -> list[Provider]:
        return [provider for provider, _ in self.answers]


class ProviderApi:
    def __init__(self, connections: Connections, http: httpx.AsyncClient) -> None:
        self._connections = connections
        self._http = http

    async def read(
        self, connection: Connection, reader: Callable[[str], Awaitable[T]], *, reads_data: bool = True
    ) -> T | Problem:
        """`reader(access_token)` for the connection, as the module docstring says; with `reads_data`, the
        connection's `last_used_at` says so (not for managing it: subscriptions, revocation)."""
        provider = connection.provider
        try:
            connection, token = await self._connections.access_token(connection.user_id, provider)
            try:
                result = await reader(token)
            except Refused:
                connection = await self._connections.refreshed(connection.user_id, provider, token)
                result = await reader(connection.grant.access_token)
            if reads_data:
                await self._connections.used(connection)
            return result
        except Refused:
            lost = await self._connections.grant_lost(connection)
            return Problem(provider, True, lost.status_message)
        except FailedPrecondition as exc:  # the connection already needs reconnecting
            return Problem(provider, True, exc.message)
        except Failed as exc:
            return Problem(provider, False, exc.message)
        except httpx.HTTPError:
            return Problem(
                provider, False, f"{provider.display_name} could not be reached; try again in a moment"
            )
        except AthenaError as exc:
            return Problem(provider, False, exc.message)

    async def read_each(
        self, connections: Sequence[Connection], reader: Callable[[Connection, str], Awaitable[T]]
    ) -> Gathered[T]:
        """`reader(connection, access_token)` for every connection at once, each as `read` does."""
        outcomes = await asyncio.gather(*(self.read(c, functools.partial(reader, c)) for c in connections))
        answers: list[tuple[Provider, T]] = []
        problems: list[Problem] = []
        for connection, outcome in zip(connections, outcomes, strict=True):
            if isinstance(outcome, Problem):
                problems.append(outcome)
            else:
                answers.append((connection.provider, outcome))
        return Gathered(answers, problems)

    async def request(
        self,
        method: str,
        url: str,
        token: str,
        provider: Provider,
        *,
        answered: Collection[int] = (),
        **options: Any,
    ) -> httpx.Response:
        """The provider's answer to a call with `token`; raises `Refused` for 401 and 403, `Failed` for
        any other error status but those `answered` (a short 429 waited out once first)."""
        name = provider.display_name
        headers = {"Authorization": f"Bearer {token}", **options.pop("headers", {})}
        response = await self._http.request(method, url, headers=headers, **options)
        wait = retry_after(response)
        if wait is not None and wait <= MAX_THROTTLE_WAIT_SECONDS and _time_left(wait):
            # Throttled for a moment: wait it out once rather than answer without this provider.
            await asyncio.sleep(wait)
            response = await self._http.request(method, url, headers=headers, **options)
        if response.status_code in answered:
            return response
        if response.status_code in (401, 403):
            raise Refused
        if response.status_code == 429:
            wait = retry_after(response)
            later = f" in {wait:.0f} s" if wait is not None else " in a moment"
            raise Failed(f"{name} is limiting requests; try again{later}")
        if response.status_code >= 400:
            raise Failed(f"{name} failed to answer (HTTP {response.status_code})")
        return response

    async def get_json(self, method: str, url: str, token: str, provider: Provider, **options: Any) -> Any:
        response = await self.request(method, url, token, provider, **options)
        try:
            return response.json()
        except ValueError as exc:
            raise Failed(f"{provider.display_name} answered something unreadable") from exc

    async def download(self, url: str, *, limit: int) -> bytes:
        """A pre-authenticated download URL's bytes (no token sent), at most `limit` of them."""
        async with self._http.stream("GET", url) as response:
            if response.status_code >= 400:
                raise Failed(f"the file could not be downloaded (HTTP {response.status_code})")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) >= limit:
                    break
        return bytes(data[:limit])
