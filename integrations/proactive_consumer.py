"""The proactive agents at work: what the integrations service does with each event of the bus.

An event says that something of a person's changed at a provider, never what; the consumer first empties
the agents' tools' cached results of that kind (`CACHED`: they would answer from before the change for up
to five minutes), then reads what it needs through the same domain objects the tools use (their
connections, a current token) and leaves the notices `integrations.proactive`'s rules answer with the
notifier (memory's `NotifierService`, whose dedupe key makes a redelivered event one notification):

- calendar changed → the next seven days' events → `focus_conflicts` (times said in the meeting's zone);
- health changed → the night that ended today → `short_night`;
- files changed → the files changed since the last look (the subscriptions' cursor) that a conversation
  read (`integrations.file_references`) → `document_changed`, continuing in that conversation;
- subscription lifecycle → `on_lifecycle` (the subscriptions' owner renews, recreates or resyncs).

`catch_up` recovers what may have been lost: for each subscription whose notifications may have been missed
(a Graph `missed` event, a subscription recreated after lapsing), it runs what a change of its kind runs —
the rules read the current state, so one run covers any number of lost notifications — then marks it
resynced. The lifecycle handler and the maintenance round call it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from athena.events.v1 import events_pb2

from integrations.calendars import Event as CalendarEvent
from integrations.calendars import Events
from integrations.file_references import Reference
from integrations.health import HealthAnswer, Metric
from integrations.proactive import Event, Notice, document_changed, focus_conflicts, short_night
from integrations.providers import Capability, Provider
from integrations.subscriptions import Subscription

log = logging.getLogger(__name__)

LOOK_AHEAD = timedelta(days=7)
CACHED: dict[int, list[str]] = {
    events_pb2.ProviderEvent.Kind.KIND_CALENDAR_CHANGED: ["calendar_freebusy", "calendar_events"],
    events_pb2.ProviderEvent.Kind.KIND_HEALTH_CHANGED: ["wearable_stats"],
}
"""The tools' ephemeral namespaces (orchestrator/tools) each kind of change makes stale."""
UTC_ZONE = ZoneInfo("UTC")
Kind = events_pb2.ProviderEvent.Kind


class CalendarReader(Protocol):
    async def events(self, user_id: str, start: datetime, end: datetime, limit: int) -> Events: ...


class HealthReader(Protocol):
    async def stats(self, user_id: str, metric: Metric, start: date, end: date) -> HealthAnswer: ...


class ChangedFile(Protocol):
    @property
    def provider(self) -> Provider: ...
    @property
    def file_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def changed_at(self) -> datetime: ...


class FileChanges(Protocol):
    async def changed_files(self, user_id: str) -> Sequence[ChangedFile]:
        """The person's files changed since the last call."""
        ...


class ReferenceReader(Protocol):
    async def referring(self, user_id: str, provider: Provider, file_id: str) -> Reference | None: ...


class Missed(Protocol):
    async def missed(self, *, limit: int = 100) -> list[Subscription]: ...

    async def resynced(self, subscription: Subscription) -> None: ...


RESYNCED_KINDS = {
    Capability.CALENDAR: Kind.KIND_CALENDAR_CHANGED,
    Capability.FILES: Kind.KIND_FILES_CHANGED,
    Capability.HEALTH: Kind.KIND_HEALTH_CHANGED,
}


class Notifier(Protocol):
    async def notify(self, user_id: str, notice: Notice) -> bool:
        """Leaves `notice` for `user_id`; answers whether it was new."""
        ...

    async def forget_cached(self, user_id: str, namespaces: list[str]) -> int:
        """Empties `user_id`'s cached tool results of `namespaces`; answers how many went."""
        ...


def _rule_event(event: CalendarEvent) -> Event | None:
    if event.all_day:
        return None
    return Event(event.id, event.title, event.start, event.end, event.busy, event.focus_time)


def _zone_of(events: list[CalendarEvent]) -> ZoneInfo:
    named = next((e.time_zone for e in events if e.time_zone), "")
    return ZoneInfo(named) if named else UTC_ZONE


class ProactiveAgents:
    def __init__(
        self,
        calendars: CalendarReader,
        health: HealthReader,
        notifier: Notifier,
        *,
        clock: Callable[[], datetime],
        on_lifecycle: Callable[[events_pb2.ProviderEvent], Awaitable[None]] | None = None,
        file_changes: FileChanges | None = None,
        references: ReferenceReader | None = None,
    ) -> None:
        self._file_changes = file_changes
        self._references = references
        self._calendars = calendars
        self._health = health
        self._notifier = notifier
        self._now = clock
        self._on_lifecycle = on_lifecycle

    async def handle(self, event: events_pb2.ProviderEvent) -> None:
        """Acts on one event of the bus (at least once: everything here may run again for the same event)."""
        if stale := CACHED.get(event.kind):
            await self._notifier.forget_cached(event.user_id, stale)
        if event.kind == Kind.KIND_CALENDAR_CHANGED:
            notices = await self._calendar_changed(event.user_id)
        elif event.kind == Kind.KIND_HEALTH_CHANGED:
            notices = await self._health_changed(event.user_id)
        elif event.kind == Kind.KIND_FILES_CHANGED:
            notices = await self._files_changed(event.user_id)
        elif event.kind == Kind.KIND_SUBSCRIPTION_LIFECYCLE and self._on_lifecycle is not None:
            await self._on_lifecycle(event)
            return
        else:
            return
        for notice in notices:
            await self._notifier.notify(event.user_id, notice)

    async def catch_up(self, subscriptions: Missed) -> int:
        """Runs what a change runs for every subscription whose notifications may have been missed (see
        the module docstring); answers how many."""
        done = 0
        for subscription in await subscriptions.missed():
            missed = subscription.missed_at.isoformat() if subscription.missed_at else ""
            await self.handle(
                events_pb2.ProviderEvent(
                    id=f"resync:{subscription.provider.value}:{subscription.id}:{missed}",
                    provider=subscription.provider.value,
                    kind=RESYNCED_KINDS[subscription.capability],
                    user_id=subscription.user_id,
                    subscription_id=subscription.id,
                    change="resync",
                )
            )
            await subscriptions.resynced(subscription)
            done += 1
        return done

    async def _calendar_changed(self, user_id: str) -> list[Notice]:
        now = self._now()
        found = await self._calendars.events(user_id, now, now + LOOK_AHEAD, 500)
        timed = [rule for e in found.events if (rule := _rule_event(e)) is not None]
        return focus_conflicts(timed, now, _zone_of(found.events))

    async def _files_changed(self, user_id: str) -> list[Notice]:
        if self._file_changes is None or self._references is None:
            return []
        notices: list[Notice] = []
        for changed in await self._file_changes.changed_files(user_id):
            reference = await self._references.referring(user_id, changed.provider, changed.file_id)
            if reference is None:
                continue
            notices += [
                replace(notice, conversation_id=reference.conversation_id)
                for notice in document_changed(
                    changed.file_id, changed.name, changed.changed_at, [reference.conversation_id], UTC_ZONE
                )
            ]
        return notices

    async def _health_changed(self, user_id: str) -> list[Notice]:
        today = self._now().date()
        found = await self._health.stats(user_id, Metric.SLEEP_MINUTES, today, today)
        minutes = found.days[-1].value if found.days else None
        return short_night(today, minutes)
