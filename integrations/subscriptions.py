"""The providers' change notifications for each connection: subscribed on connect, renewed before they
expire, stopped on disconnect and erasure, recovered by a resync when one was missed.

What is watched, per capability held (PROVIDERS.md §2, §3, §5):

| capability | Google | Microsoft Graph subscription |
|---|---|---|
| calendar | `events.watch` channel on the primary calendar | `me/events` (created, updated, deleted) |
| files | Drive `changes.watch` channel, and its cursor for `changed_files` | `me/drive/root` (updated) |
| health | the person registered under their `healthUserId` | — |

Google Health notifications come from one subscriber for the whole deployment (its `AUTOMATIC` policy
covers every consenting person, set up once by an operator; PROVIDERS.md §4) and name the person by their
`healthUserId` (`users.getIdentity`): a health "subscription" is that id registered for the person
(`mesh.subscriptions.health_subscription_id`), renewed by registering it again, stopped by forgetting it.

- **Secrets.** Each subscription gets a random secret the provider echoes with every notification (Graph
  `clientState`, Google's channel `token`). It is kept sealed in the store, and registered (as a SHA-256) in
  `mesh.subscriptions.SubscriptionRegistry`, where the webhooks service verifies notifications.
- **Lifetimes.** Graph subscriptions ask for the resource's documented maximum (events 10,080 minutes,
  driveItem 42,300) less `LIFETIME_MARGIN`; Google channels for a week (`params.ttl`). Graph renews with a
  PATCH; a Google channel cannot be renewed: a new one is opened, then the old one stopped.
- **Recovery.** `maintain` renews whatever expires within `RENEW_WITHIN` and recreates what the provider
  no longer has (expired, or removed). A subscription recreated after a gap, and a Graph `missed` lifecycle
  event, mark it `missed_at`: notifications may have been lost, and the event consumer resyncs
  (`needing_resync`, then `resynced`).
- **Cursor.** A Google files channel keeps the Drive page token it was opened at (`cursor`); when a
  notification says Drive changed, `changed_files` lists the changes since it (`changes.list`), answers the
  files changed (once each, the latest change; not those removed or in the bin) and moves the cursor to
  Drive's `newStartPageToken`. The move is conditional on the cursor read, so that two notifications read
  at once answer each change once. A channel replacing another (a renewal, a reconnect after a lapse)
  continues from the old one's cursor, so nothing between them is missed.
- **Best effort.** Stopping at the provider never blocks a disconnect or an erasure; a subscription that
  cannot be made (a grant without the permission, an unreachable endpoint) leaves the connection working
  without notifications, and is tried again on the next connect.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import httpx

from integrations.connections import Connection, Connections, Status
from integrations.provider_api import Failed, Problem, ProviderApi
from integrations.providers import Capability, Provider
from mesh.subscriptions import SubscriptionRegistry, health_subscription_id

log = logging.getLogger(__name__)

GRAPH_MAX_LIFETIME = {
    Capability.CALENDAR: timedelta(minutes=10_080),
    Capability.FILES: timedelta(minutes=42_300),
}
"""Graph's maximum subscription lifetime by what it watches (Outlook event, no resource data; driveItem)."""
GOOGLE_CHANNEL_TTL = timedelta(days=7)
"""What a Google channel asks for: Calendar's default TTL, and the maximum of Drive's changes channels."""
LIFETIME_MARGIN = timedelta(hours=1)
"""Asked for less than the maximum, so that clock skew never makes the provider refuse a renewal."""
RENEW_WITHIN = timedelta(days=1)
"""A subscription expiring within this is renewed by `maintain`."""
GRAPH_RESOURCES = {Capability.CALENDAR: "me/events", Capability.FILES: "me/drive/root"}
GRAPH_CHANGE_TYPES = {Capability.CALENDAR: "created,updated,deleted", Capability.FILES: "updated"}
WATCHED = (Capability.CALENDAR, Capability.FILES, Capability.HEALTH)
DRIVE_CHANGE_FIELDS = (
    "nextPageToken,newStartPageToken,changes(fileId,removed,time,file(name,modifiedTime,trashed))"
)
"""What `changed_files` asks `changes.list` for."""
DRIVE_CHANGE_PAGE_SIZE = 1000
"""Drive's maximum `pageSize` for `changes.list`."""
MAX_CHANGE_PAGES = 10
"""Pages of changes read per `changed_files` call; the rest wait for the next call (the cursor says where)."""


class Lifecycle(StrEnum):
    """What a Graph lifecycle notification asked for, and what `on_lifecycle` did about it."""

    REAUTHORIZED = "reauthorized"
    RECREATED = "recreated"
    RESYNC = "resync"
    UNKNOWN = "unknown"
    """No such subscription here (stopped meanwhile, or another deployment's): nothing done."""
    FAILED = "failed"
    """The provider refused; `maintain` tries again."""


@dataclass(frozen=True, slots=True)
class Subscription:
    provider: Provider
    id: str
    """Graph's subscription id; Google's channel id."""
    user_id: str
    capability: Capability
    resource: str
    """Graph's resource path; Google's `resourceId` (what channels.stop needs)."""
    secret: str
    """Graph `clientState`; Google channel `token`."""
    expires_at: datetime
    missed_at: datetime | None = None
    """Set when notifications may have been lost (a `missed` event, a recreation after a gap)."""
    cursor: str = ""
    """A Google files channel's Drive page token: its changes are read from here. Empty for the others."""

    @property
    def kind(self) -> str:
        """The registry's kind ("calendar" or "files")."""
        return self.capability.value


@dataclass(frozen=True, slots=True)
class ChangedFile:
    """A file of the person's that changed since the last look (`Subscriptions.changed_files`)."""

    provider: Provider
    file_id: str
    name: str
    changed_at: datetime
    """When the provider recorded its latest change (Drive's change `time`)."""


class SubscriptionStore(Protocol):
    """Where subscriptions are kept (the secret sealed with the person's data key)."""

    async def add(self, subscription: Subscription) -> None: ...

    async def get(self, provider: Provider, subscription_id: str) -> Subscription | None: ...

    async def held_by(self, user_id: str) -> list[Subscription]: ...

    async def update(self, subscription: Subscription) -> None:
        """Sets the subscription's expiry and `missed_at` (not its cursor: `move_cursor`)."""
        ...

    async def move_cursor(self, subscription: Subscription, cursor: str) -> bool:
        """Sets the cursor to `cursor` if it is still `subscription.cursor`; answers whether it did."""
        ...

    async def delete(self, provider: Provider, subscription_id: str) -> bool: ...

    async def expiring(self, before: datetime, limit: int) -> list[Subscription]:
        """Subscriptions expiring before `before`, soonest first (those whose owner's key is gone skipped)."""
        ...

    async def missed(self, limit: int) -> list[Subscription]:
        """Subscriptions whose notifications may have been lost (`missed_at` set), longest first."""
        ...


class CursorRejected(Exception):
    """Drive refused the page token (400): it is discarded and listing starts again from now."""


class Gone(Exception):
    """The provider no longer has the subscription (404)."""


class NotPermitted(Exception):
    """The provider refused to make the subscription with this grant (403): its scopes let it read the
    resource, not watch it (a Graph driveItem subscription needs Files.ReadWrite). Not a lost grant."""


def _graph_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def _graph_expiry(text: str) -> datetime:
    """Graph's `expirationDateTime` (seven fractional digits, `Z`) as an aware datetime."""
    head, _, _ = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(head).replace(tzinfo=UTC)


class Subscriptions:
    """Every person's subscriptions, made through their connections (`connections` for tokens) at the
    provider APIs, kept in `store` and registered in `registry`. `webhooks_url` is the edge's public
    origin: notifications go to `{webhooks_url}/webhooks/graph` (and `/webhooks/graph/lifecycle`) and
    `{webhooks_url}/webhooks/google`."""

    def __init__(
        self,
        store: SubscriptionStore,
        registry: SubscriptionRegistry,
        connections: Connections,
        http: httpx.AsyncClient,
        *,
        webhooks_url: str,
        google_calendar_url: str,
        drive_url: str,
        graph_url: str,
        clock: Callable[[], datetime],
        health_url: str = "https://health.googleapis.com/v4",
    ) -> None:
        self._store = store
        self._registry = registry
        self._connections = connections
        self._api = ProviderApi(connections, http)
        self._webhooks = webhooks_url.rstrip("/")
        self._calendar_url = google_calendar_url
        self._drive_url = drive_url
        self._graph_url = graph_url
        self._health_url = health_url.rstrip("/")
        self._clock = clock

    # --- the connection hooks (integrations.connections.ConnectionHooks) -------------------------------

    async def connected(self, connection: Connection) -> None:
        """A connection made or widened: its subscriptions ensured."""
        await self.ensure(connection)

    async def disconnecting(self, connection: Connection) -> None:
        """Before the grant goes: the connection's subscriptions stopped."""
        for subscription in await self._store.held_by(connection.user_id):
            if subscription.provider is connection.provider:
                await self._stop(subscription, connection)

    async def erasing(self, user_id: str) -> None:
        """Before an erasure revokes the grants: every subscription of the person stopped."""
        connections = {c.provider: c for c in await self._connections.list(user_id)}
        for subscription in await self._store.held_by(user_id):
            await self._stop(subscription, connections.get(subscription.provider))

    # --- the work -------------------------------------------------------------------------------------

    async def ensure(self, connection: Connection) -> list[Subscription]:
        """A live subscription for each watched capability the connection holds (made where missing)."""
        mine = [s for s in await self._store.held_by(connection.user_id) if s.provider is connection.provider]
        held = {s.capability: s for s in mine if s.expires_at > self._clock()}
        cursors = {s.capability: s.cursor for s in mine if s.cursor}  # a lapsed channel's: continue from it
        made = []
        for capability in WATCHED:
            if capability in connection.capabilities and capability not in held:
                subscription = await self._create(connection, capability, cursor=cursors.get(capability, ""))
                if subscription is not None:
                    made.append(subscription)
        return made

    async def held_by(self, user_id: str) -> list[Subscription]:
        return await self._store.held_by(user_id)

    async def needing_resync(self, user_id: str) -> list[Subscription]:
        """The person's subscriptions whose notifications may have been lost since `missed_at`."""
        return [s for s in await self._store.held_by(user_id) if s.missed_at is not None]

    async def missed(self, *, limit: int = 100) -> list[Subscription]:
        """Everyone's subscriptions waiting for a resync (what `maintain` recreated after a gap, what a
        Graph `missed` event marked)."""
        return await self._store.missed(limit)

    async def resynced(self, subscription: Subscription) -> None:
        """The consumer caught up with the subscription's resource: `missed_at` cleared."""
        await self._store.update(replace(subscription, missed_at=None))

    async def changed_files(self, user_id: str) -> list[ChangedFile]:
        """The person's Drive files changed since the last call (or since the files channel was opened), as
        the module docstring says; empty without a Google files subscription, and when Drive cannot answer
        now (logged; the cursor stays, and the next call lists them)."""
        watching = [
            s
            for s in await self._store.held_by(user_id)
            if (s.provider, s.capability) == (Provider.GOOGLE, Capability.FILES) and s.cursor
        ]
        if not watching:
            return []
        subscription = max(watching, key=lambda s: s.expires_at)  # the newest, while one replaces another
        connection = await self._connection(subscription)
        if connection is None or connection.status is not Status.CONNECTED:
            return []
        listed = await self._api.read(
            connection, lambda token: self._drive_changes(token, subscription.cursor), reads_data=False
        )
        if isinstance(listed, Problem):
            log.warning(
                "the changed Drive files could not be listed; the next notification tries again",
                extra={"provider": Provider.GOOGLE.value, "error": listed.message},
            )
            return []
        changed, cursor = listed
        if not await self._store.move_cursor(subscription, cursor):
            return []  # another call read these changes meanwhile, and answers them
        return changed

    async def _drive_changes(self, token: str, cursor: str) -> tuple[list[ChangedFile], str]:
        """The files changed since `cursor` (the latest change of each) and where the next look starts."""
        latest: dict[str, dict[str, Any]] = {}
        page_token = cursor
        try:
            for _ in range(MAX_CHANGE_PAGES):
                response = await self._api.request(
                    "GET",
                    f"{self._drive_url}/changes",
                    token,
                    Provider.GOOGLE,
                    answered=(400,),
                    params={
                        "pageToken": page_token,
                        "pageSize": str(DRIVE_CHANGE_PAGE_SIZE),
                        "fields": DRIVE_CHANGE_FIELDS,
                    },
                )
                if response.status_code == 400:
                    raise CursorRejected
                page = response.json()
                for change in page.get("changes", []):
                    latest.pop(str(change["fileId"]), None)  # keeps them in the order of their latest change
                    latest[str(change["fileId"])] = change
                if "newStartPageToken" in page:
                    page_token = str(page["newStartPageToken"])
                    break
                page_token = str(page["nextPageToken"])
            changed = [
                ChangedFile(
                    Provider.GOOGLE,
                    file_id,
                    str(change["file"]["name"]),
                    datetime.fromisoformat(str(change["time"])),
                )
                for file_id, change in latest.items()
                if not change.get("removed") and "file" in change and not change["file"].get("trashed")
            ]
        except CursorRejected:
            # Drive: a rejected token is discarded and listing restarts; what changed meanwhile is lost.
            log.warning("Drive refused the files channel's cursor; reading changes from now on")
            start = await self._api.get_json(
                "GET", f"{self._drive_url}/changes/startPageToken", token, Provider.GOOGLE
            )
            return [], str(start["startPageToken"])
        except (KeyError, TypeError, ValueError) as exc:
            raise Failed("Google Drive answered something unreadable") from exc
        return changed, page_token

    async def maintain(self, *, limit: int = 100) -> int:
        """Renews what expires within `RENEW_WITHIN`, recreating what the provider no longer has; answers
        how many were renewed or recreated."""
        now = self._clock()
        done = 0
        for subscription in await self._store.expiring(now + RENEW_WITHIN, limit):
            try:
                if await self._renew(subscription):
                    done += 1
            except Exception:  # one person's trouble must not stop the others' renewals
                log.exception(
                    "renewing a subscription failed", extra={"provider": subscription.provider.value}
                )
        return done

    async def on_lifecycle(self, provider: Provider, subscription_id: str, change: str) -> Lifecycle:
        """What the event consumer calls for a Graph lifecycle notification (already verified against the
        registry): `reauthorizationRequired` → reauthorize; `subscriptionRemoved` → recreate (and resync);
        `missed` → mark it for a resync."""
        subscription = await self._store.get(provider, subscription_id)
        if subscription is None:
            return Lifecycle.UNKNOWN
        connection = await self._connection(subscription)
        if connection is None:
            return Lifecycle.UNKNOWN
        if change == "missed":
            await self._store.update(replace(subscription, missed_at=self._clock()))
            return Lifecycle.RESYNC
        if change == "subscriptionRemoved":
            await self._forget(subscription)
            made = await self._create(connection, subscription.capability, missed=True)
            return Lifecycle.RECREATED if made is not None else Lifecycle.FAILED
        if change == "reauthorizationRequired":
            url = f"{self._graph_url}/subscriptions/{subscription.id}/reauthorize"

            async def reauthorize(token: str) -> None:
                response = await self._call("POST", url, token, provider)
                if response.status_code == 404:
                    raise Gone

            try:
                outcome = await self._api.read(connection, reauthorize, reads_data=False)
            except Gone:
                await self._forget(subscription)
                made = await self._create(connection, subscription.capability, missed=True)
                return Lifecycle.RECREATED if made is not None else Lifecycle.FAILED
            return Lifecycle.FAILED if isinstance(outcome, Problem) else Lifecycle.REAUTHORIZED
        return Lifecycle.UNKNOWN

    # --- one subscription ------------------------------------------------------------------------------

    async def _connection(self, subscription: Subscription) -> Connection | None:
        for connection in await self._connections.list(subscription.user_id):
            if connection.provider is subscription.provider:
                return connection
        return None

    async def _call(
        self, method: str, url: str, token: str, provider: Provider, **options: Any
    ) -> httpx.Response:
        """`ProviderApi.request`, a 404 answered rather than raised (the subscription is gone)."""
        return await self._api.request(method, url, token, provider, answered=(404,), **options)

    async def _create(
        self, connection: Connection, capability: Capability, *, missed: bool = False, cursor: str = ""
    ) -> Subscription | None:
        """A new subscription; a Google files channel continues from `cursor` (a replaced one's), if any."""
        secret = secrets.token_urlsafe(32)
        subscribe = self._graph_create if connection.provider is Provider.MICROSOFT else self._google_watch
        try:
            made = await self._api.read(
                connection, lambda token: subscribe(token, capability, secret, cursor), reads_data=False
            )
        except NotPermitted:
            made = Problem(connection.provider, False, "the grant does not permit watching this")
        if isinstance(made, Problem):
            log.warning(
                "a subscription could not be made; the connection works without notifications",
                extra={
                    "provider": connection.provider.value,
                    "capability": capability.value,
                    "error": made.message,
                },
            )
            return None
        subscription_id, resource, expires_at, opened_at = made
        subscription = Subscription(
            provider=connection.provider,
            id=subscription_id,
            user_id=connection.user_id,
            capability=capability,
            resource=resource,
            secret=secret,
            expires_at=expires_at,
            missed_at=self._clock() if missed else None,
            cursor=opened_at,
        )
        await self._store.add(subscription)
        await self._register(subscription)
        return subscription

    async def _register(self, subscription: Subscription) -> None:
        await self._registry.register(
            subscription.provider.value,
            subscription.id,
            user_id=subscription.user_id,
            kind=subscription.kind,
            resource=subscription.resource,
            secret=subscription.secret,
            expires_at=subscription.expires_at,
        )

    async def _forget(self, subscription: Subscription) -> None:
        await self._registry.remove(subscription.provider.value, subscription.id)
        await self._store.delete(subscription.provider, subscription.id)

    async def _made(
        self, method: str, url: str, token: str, provider: Provider, body: dict[str, Any], **options: Any
    ) -> Any:
        """The provider's JSON answer to a subscribing call; `NotPermitted` for a 403 (the grant reads, but
        may not watch: not a reason to mark it lost), `Failed` for other errors."""
        response = await self._api.request(
            method, url, token, provider, answered=(403,), json=body, **options
        )
        if response.status_code == 403:
            raise NotPermitted
        try:
            return response.json()
        except ValueError as exc:
            raise Failed(f"{provider.display_name} answered something unreadable") from exc

    async def _graph_create(
        self, token: str, capability: Capability, secret: str, _cursor: str
    ) -> tuple[str, str, datetime, str]:
        resource = GRAPH_RESOURCES[capability]
        expires = self._clock() + GRAPH_MAX_LIFETIME[capability] - LIFETIME_MARGIN
        body = {
            "changeType": GRAPH_CHANGE_TYPES[capability],
            "notificationUrl": f"{self._webhooks}/webhooks/graph",
            "lifecycleNotificationUrl": f"{self._webhooks}/webhooks/graph/lifecycle",
            "resource": resource,
            "expirationDateTime": _graph_time(expires),
            "clientState": secret,
        }
        answer = await self._made("POST", f"{self._graph_url}/subscriptions", token, Provider.MICROSOFT, body)
        return str(answer["id"]), resource, _graph_expiry(str(answer["expirationDateTime"])), ""

    async def _google_watch(
        self, token: str, capability: Capability, secret: str, cursor: str
    ) -> tuple[str, str, datetime, str]:
        """The channel's id, resourceId, expiry and (for Drive's changes) the page token it was opened at:
        `cursor` when given, else Drive's start token (now)."""
        channel = {
            "id": str(uuid.uuid4()),
            "type": "web_hook",
            "address": f"{self._webhooks}/webhooks/google",
            "token": secret,
            "params": {"ttl": str(int(GOOGLE_CHANNEL_TTL.total_seconds()))},
        }
        if capability is Capability.HEALTH:
            identity = await self._api.get_json(
                "GET", f"{self._health_url}/users/me/identity", token, Provider.GOOGLE
            )
            health_user = str(identity["healthUserId"])
            expires = self._clock() + GOOGLE_CHANNEL_TTL
            return health_subscription_id(health_user), health_user, expires, ""
        if capability is Capability.CALENDAR:
            url, params, page_token = f"{self._calendar_url}/calendars/primary/events/watch", {}, ""
        else:
            if cursor:
                page_token = cursor
            else:
                start = await self._api.get_json(
                    "GET", f"{self._drive_url}/changes/startPageToken", token, Provider.GOOGLE
                )
                page_token = str(start["startPageToken"])
            url, params = f"{self._drive_url}/changes/watch", {"pageToken": page_token}
        answer = await self._made("POST", url, token, Provider.GOOGLE, channel, params=params)
        expires = datetime.fromtimestamp(int(answer["expiration"]) / 1000, UTC)
        return str(answer["id"]), str(answer["resourceId"]), expires, page_token

    async def _renew(self, subscription: Subscription) -> bool:
        connection = await self._connection(subscription)
        if connection is None or connection.status is not Status.CONNECTED:
            await self._stop(subscription, None)  # nothing to renew it with
            return False
        now = self._clock()
        held = await self._store.held_by(subscription.user_id)
        # The stored cursor, not the one read with the expiring list: `changed_files` may have moved it.
        cursor = next((s.cursor for s in held if s.id == subscription.id), subscription.cursor)
        successor = [
            s
            for s in held
            if (s.provider, s.capability) == (subscription.provider, subscription.capability)
            and s.id != subscription.id
            and s.expires_at > now + RENEW_WITHIN
        ]
        if successor:  # replaced already (a reconnect, or a renewal whose stop failed): this one just goes
            await self._stop(subscription, connection)
            return False
        if subscription.capability is Capability.HEALTH:  # a registration: registered again
            fresh = replace(subscription, expires_at=now + GOOGLE_CHANNEL_TTL)
            await self._store.update(fresh)
            await self._register(fresh)
            return True
        lapsed = subscription.expires_at <= now
        if subscription.provider is Provider.GOOGLE or lapsed:
            # A channel cannot be renewed, and a lapsed subscription is gone at the provider: a new one,
            # then the old one stopped (the overlap loses nothing).
            made = await self._create(connection, subscription.capability, missed=lapsed, cursor=cursor)
            if made is None:
                return False
            await self._stop(subscription, connection)
            return True
        expires = self._clock() + GRAPH_MAX_LIFETIME[subscription.capability] - LIFETIME_MARGIN
        url = f"{self._graph_url}/subscriptions/{subscription.id}"

        async def patch(token: str) -> datetime | None:
            response = await self._call(
                "PATCH", url, token, Provider.MICROSOFT, json={"expirationDateTime": _graph_time(expires)}
            )
            if response.status_code == 404:
                return None
            return _graph_expiry(str(response.json()["expirationDateTime"]))

        renewed = await self._api.read(connection, patch, reads_data=False)
        if isinstance(renewed, Problem):
            return False
        if renewed is None:  # removed at Graph: made again, and whatever happened meanwhile resynced
            await self._forget(subscription)
            return await self._create(connection, subscription.capability, missed=True) is not None
        fresh = replace(subscription, expires_at=renewed)
        await self._store.update(fresh)
        await self._register(fresh)
        return True

    async def _stop(self, subscription: Subscription, connection: Connection | None) -> None:
        """Stops the subscription at the provider (at best), then forgets it."""
        at_provider = subscription.capability is not Capability.HEALTH  # nothing per person to stop there
        if at_provider and connection is not None and connection.status is Status.CONNECTED:
            if subscription.provider is Provider.MICROSOFT:
                url = f"{self._graph_url}/subscriptions/{subscription.id}"

                async def stop(token: str) -> None:
                    await self._call("DELETE", url, token, Provider.MICROSOFT)

            else:
                calendar = subscription.capability is Capability.CALENDAR
                base = self._calendar_url if calendar else self._drive_url
                body = {"id": subscription.id, "resourceId": subscription.resource}

                async def stop(token: str) -> None:
                    await self._call("POST", f"{base}/channels/stop", token, Provider.GOOGLE, json=body)

            outcome = await self._api.read(connection, stop, reads_data=False)
            if isinstance(outcome, Problem):
                log.warning(
                    "stopping a subscription at its provider failed; forgetting it anyway",
                    extra={"provider": subscription.provider.value, "error": outcome.message},
                )
        await self._forget(subscription)
