"""A person's connections: begin and complete one (OAuth code flow with PKCE and a one-time state), list
them, disconnect, and hand out a fresh access token to the tools that read through them.

- **State.** BeginConnection makes a random `state` and PKCE verifier, and keeps the state's SHA-256 (never
  the state itself) with the caller, provider, capabilities, redirect URI and the verifier, for ten minutes.
  CompleteConnection takes it atomically, for its owner only, before anything else: a replayed state fails
  even when the first completion failed later, and another person's state is unknown to the caller.
- **Capabilities.** Only what was granted counts: Google's granular consent may grant fewer scopes than
  asked, and a capability is held only when every one of its scopes is. Connecting more capabilities of a
  connected provider keeps the ones held (Google's grant includes them again; Microsoft's consent too).
- **Hooks.** What watches connections (`ConnectionHooks`: the providers' change-notification subscriptions)
  hears of a connection made or widened, of a disconnect before the grant is revoked, and of an erasure
  before anything is deleted. A hook that fails is logged and never fails the connection's own operation.
- **Refresh.** An access token is refreshed shortly before it expires, once per connection however many
  callers need it at that moment (single flight). A grant the provider no longer accepts marks the
  connection NEEDS_RECONNECT with a sentence for the person.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol
from urllib.parse import urlsplit

from integrations.oauth import Grant, GrantRejected, OAuth
from integrations.providers import Capability, Provider, ProviderClient
from mesh.errors import AthenaError, FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger(__name__)

STATE_TTL = timedelta(minutes=10)
REFRESH_MARGIN_SECONDS = 120.0
"""An access token this close to its expiry is refreshed before use."""


class Status(StrEnum):
    CONNECTED = "connected"
    NEEDS_RECONNECT = "needs_reconnect"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Connection:
    id: str
    user_id: str
    provider: Provider
    capabilities: frozenset[Capability]
    status: Status
    status_message: str
    grant: Grant
    connected_at: datetime
    last_used_at: datetime | None = None

    @property
    def account(self) -> str:
        return self.grant.account


@dataclass(frozen=True, slots=True)
class PendingConnection:
    """A connection begun and not completed yet."""

    state_hash: bytes
    user_id: str
    provider: Provider
    capabilities: frozenset[Capability]
    redirect_uri: str
    code_verifier: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Begun:
    authorization_url: str
    state: str
    expires_at: datetime


class ConnectionStore(Protocol):
    """Where connections and pending states are kept (sealed with the person's data key)."""

    async def add_pending(self, pending: PendingConnection) -> None: ...

    async def take_pending(self, user_id: str, state_hash: bytes) -> PendingConnection | None:
        """Removes and answers the user's pending connection with this state hash (None if there is none:
        unknown, used, or someone else's)."""
        ...

    async def get(self, user_id: str, provider: Provider) -> Connection | None: ...

    async def list(self, user_id: str) -> list[Connection]: ...

    async def save(self, connection: Connection) -> Connection:
        """Adds or replaces the user's connection to its provider; answers it as stored."""
        ...

    async def delete(self, user_id: str, provider: Provider) -> bool: ...

    async def touch(self, user_id: str, provider: Provider, when: datetime) -> None:
        """Sets the connection's `last_used_at` alone (a concurrent refresh's grant stays as stored)."""
        ...

    async def purge_pending(self, now: datetime) -> int:
        """Deletes expired pending connections; answers how many."""
        ...

    async def purge_user(self, user_id: str) -> Purged:
        """Deletes everything of the user's and destroys their data key."""
        ...


class ConnectionHooks(Protocol):
    """Told of what happens to connections (integrations.subscriptions)."""

    async def connected(self, connection: Connection) -> None:
        """The connection was made or widened (it is stored)."""
        ...

    async def disconnecting(self, connection: Connection) -> None:
        """The connection is about to go: its grant still serves."""
        ...

    async def erasing(self, user_id: str) -> None:
        """The person's connections are about to be erased: their grants still serve."""
        ...


@dataclass(frozen=True, slots=True)
class Purged:
    rows: int
    data_key: bool
    revoked: int = 0


def hash_state(state: str) -> bytes:
    return hashlib.sha256(state.encode()).digest()


def _needs_reconnect(provider: Provider) -> str:
    return f"{provider.display_name} no longer accepts AthenaOS's access to your account; connect it again."


Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Connections:
    """The connections of every person, through `store`, with the providers this deployment is registered
    with (`providers`: a provider without a client is not offered)."""

    def __init__(
        self,
        store: ConnectionStore,
        oauth: OAuth,
        providers: Mapping[Provider, ProviderClient],
        *,
        clock: Clock = _utc_now,
        hooks: ConnectionHooks | None = None,
    ) -> None:
        self._store = store
        self._hooks = hooks
        self._oauth = oauth
        self._providers = providers
        self._clock = clock
        self._refreshing: weakref.WeakValueDictionary[tuple[str, Provider], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def observe(self, hooks: ConnectionHooks) -> None:
        """Tells `hooks` of connections made, disconnected and erased from now on (what they need may be
        built on this object, hence not a constructor argument alone)."""
        self._hooks = hooks

    async def _tell(self, what: str, call: Callable[[ConnectionHooks], Awaitable[None]]) -> None:
        if self._hooks is None:
            return
        try:
            await call(self._hooks)
        except Exception:  # the hooks' trouble never fails a connection's own operation
            log.exception("a connection hook failed", extra={"hook": what})

    def _client(self, provider: Provider) -> ProviderClient:
        client = self._providers.get(provider)
        if client is None:
            raise FailedPrecondition(f"{provider.display_name} is not set up in this deployment")
        return client

    async def begin(
        self, user_id: str, provider: Provider, capabilities: Sequence[Capability], redirect_uri: str
    ) -> Begun:
        client = self._client(provider)
        for capability in capabilities:
            if not client.offers(capability):
                raise InvalidArgument(
                    "capabilities", f"{provider.display_name} offers no access to {capability.noun}"
                )
        if redirect_uri not in client.redirect_uris:
            raise InvalidArgument("redirect_uri", f"is not registered with {provider.display_name}")
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 characters: RFC 7636 asks for 43 to 128
        wanted = frozenset(capabilities)
        url = await self._oauth.authorization_url(
            client,
            scopes=client.scopes(wanted),
            state=state,
            code_verifier=verifier,
            redirect_uri=redirect_uri,
        )
        expires_at = self._clock() + STATE_TTL
        await self._store.add_pending(
            PendingConnection(
                hash_state(state), user_id, provider, wanted, redirect_uri, verifier, expires_at
            )
        )
        return Begun(url, state, expires_at)

    async def complete(
        self, user_id: str, state: str, code: str, error: str, redirect_uri: str
    ) -> Connection:
        pending = await self._store.take_pending(user_id, hash_state(state))
        if pending is None or pending.expires_at <= self._clock():
            raise InvalidArgument("state", "is unknown, used or expired; connect again")
        if redirect_uri != pending.redirect_uri:
            raise InvalidArgument("redirect_uri", "is not the one the connection began with")
        provider = pending.provider
        client = self._client(provider)
        if error:
            refused = "you declined" if error == "access_denied" else f"it answered {error!r}"
            raise FailedPrecondition(f"{provider.display_name} did not connect: {refused}")
        if not code:
            raise InvalidArgument("code", "is required when the provider sent no error")
        try:
            grant = await self._oauth.exchange(
                client, code=code, code_verifier=pending.code_verifier, redirect_uri=redirect_uri
            )
        except GrantRejected as exc:
            raise FailedPrecondition(
                f"{provider.display_name} did not accept the sign-in; connect again"
            ) from exc
        granted = client.granted(grant.scopes)
        earlier = await self._store.get(user_id, provider)
        held = granted | (
            earlier.capabilities if earlier is not None and provider is Provider.MICROSOFT else frozenset()
        )
        if not pending.capabilities & held:
            nouns = " or ".join(c.noun for c in sorted(pending.capabilities))
            raise FailedPrecondition(f"{provider.display_name} did not grant access to {nouns}")
        connection = Connection(
            id=earlier.id if earlier is not None else str(uuid.uuid4()),
            user_id=user_id,
            provider=provider,
            capabilities=held,
            status=Status.CONNECTED,
            status_message="",
            grant=grant,
            connected_at=earlier.connected_at if earlier is not None else self._clock(),
            last_used_at=earlier.last_used_at if earlier is not None else None,
        )
        saved = await self._store.save(connection)
        await self._tell("connected", lambda hooks: hooks.connected(saved))
        return saved

    async def list(self, user_id: str) -> list[Connection]:
        return await self._store.list(user_id)

    async def holding(self, user_id: str, capability: Capability) -> Sequence[Connection]:
        """The user's connections that hold `capability`."""
        return [c for c in await self._store.list(user_id) if capability in c.capabilities]

    async def disconnect(self, user_id: str, provider: Provider) -> bool:
        """Revokes the grant at the provider where it can, then deletes the connection; answers whether the
        provider confirmed a revocation. Nothing to disconnect is not an error."""
        connection = await self._store.get(user_id, provider)
        if connection is None:
            return False
        await self._tell("disconnecting", lambda hooks: hooks.disconnecting(connection))
        revoked = False
        if connection.status is Status.CONNECTED:
            revoked = await self._oauth.revoke(self._client(provider), connection.grant)
        await self._store.delete(user_id, provider)
        return revoked

    async def purge(self, user_id: str) -> Purged:
        """Erases the user's connections: each grant revoked where the provider can (at best: an unreachable
        provider does not stop an erasure), then everything deleted and the data key destroyed."""
        await self._tell("erasing", lambda hooks: hooks.erasing(user_id))
        revoked = 0
        for connection in await self._store.list(user_id):
            client = self._providers.get(connection.provider)
            if client is None or connection.status is not Status.CONNECTED:
                continue
            try:
                revoked += await self._oauth.revoke(client, connection.grant)
            except AthenaError as exc:
                log.warning(
                    "revoking a grant while erasing its owner failed; deleting it anyway",
                    extra={"provider": connection.provider.value, "error": exc.message},
                )
        purged = await self._store.purge_user(user_id)
        return replace(purged, revoked=revoked)

    async def access_token(self, user_id: str, provider: Provider) -> tuple[Connection, str]:
        """The connection and a current access token; refreshed first when it is about to expire (one
        refresh however many ask at once). NotFound without a connection; FailedPrecondition when it
        needs reconnecting (the connection marked so)."""
        connection = await self._store.get(user_id, provider)
        if connection is None:
            raise NotFound(f"{provider.display_name} is not connected")
        if connection.status is Status.NEEDS_RECONNECT:
            raise FailedPrecondition(connection.status_message or _needs_reconnect(provider))
        if not self._expiring(connection):
            return connection, connection.grant.access_token
        fresh = await self._refresh(connection)
        return fresh, fresh.grant.access_token

    async def used(self, connection: Connection) -> None:
        """Records that data was read through the connection just now."""
        await self._store.touch(connection.user_id, connection.provider, self._clock())

    async def grant_lost(self, connection: Connection) -> Connection:
        """Records that the provider refused the connection's grant (an API answered 401 after a refresh)."""
        lost = replace(
            connection, status=Status.NEEDS_RECONNECT, status_message=_needs_reconnect(connection.provider)
        )
        return await self._store.save(lost)

    def _expiring(self, connection: Connection) -> bool:
        return connection.grant.expires_at - REFRESH_MARGIN_SECONDS <= self._clock().timestamp()

    async def refreshed(self, user_id: str, provider: Provider, refused_token: str) -> Connection:
        """The connection with an access token other than `refused_token`, which the provider refused
        before its time: refreshed, unless that happened meanwhile (one refresh for everyone refused)."""
        connection = await self._store.get(user_id, provider)
        if connection is None:
            raise NotFound(f"{provider.display_name} is not connected")
        return await self._refresh(connection, unless=lambda c: c.grant.access_token != refused_token)

    async def _refresh(
        self, connection: Connection, *, unless: Callable[[Connection], bool] | None = None
    ) -> Connection:
        """One refresh at a time per connection; whoever waited for it reads its outcome from the store
        (a refresh finished meanwhile, by this process or another replica, is not done again)."""
        key = (connection.user_id, connection.provider)
        lock = self._refreshing.get(key)
        if lock is None:
            lock = self._refreshing[key] = asyncio.Lock()
        async with lock:
            current = await self._store.get(connection.user_id, connection.provider)
            if current is None:
                raise NotFound(f"{connection.provider.display_name} is not connected")
            if current.status is Status.NEEDS_RECONNECT:
                raise FailedPrecondition(current.status_message or _needs_reconnect(current.provider))
            done = unless(current) if unless is not None else not self._expiring(current)
            if done:
                return current
            return await self._refresh_now(current)

    async def _refresh_now(self, connection: Connection) -> Connection:
        client = self._client(connection.provider)
        try:
            grant = await self._oauth.refresh(
                client, connection.grant, client.scopes(connection.capabilities)
            )
        except GrantRejected:
            lost = await self.grant_lost(connection)
            raise FailedPrecondition(lost.status_message) from None
        return await self._store.save(
            replace(connection, grant=grant, status=Status.CONNECTED, status_message="")
        )


def redirect_allowed(uri: str) -> bool:
    """Whether `uri` may be a redirect URI at all: https, or http on loopback (development)."""
    parts = urlsplit(uri)
    if parts.scheme == "https" and parts.hostname:
        return True
    return parts.scheme == "http" and parts.hostname in {"localhost", "127.0.0.1", "::1"}
