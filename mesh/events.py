"""The event bus: verified provider notifications on a Redis stream, for consumers to act on at least once.

The webhooks service publishes each `athena.events.v1.ProviderEvent` with `EventBus.publish` (XADD to
`STREAM`, trimmed to about `MAX_LEN` entries): field `id` is the event's id (its dedupe key), field `event`
the event as proto3 JSON, so an operator reads it with `redis-cli XRANGE athena:events - +`. Consumers read
it in consumer groups (see `EventConsumer`).

Other streams reuse the machinery with a message type of their own (field `id` still the dedupe key): the
memory service's fact-extraction jobs (`athena.memory.v1.FactExtractionJob`, `memory.extraction`).

What a consumer guarantees:

- At least once. An entry is acknowledged (XACK) only after its handler returned, so one whose consumer
  died, was killed or lost Redis on the way is delivered again: to the consumer itself when it reads its
  own pending entries on (re)start, or to any consumer of the group once it has been idle for
  `claim_idle_seconds` (XAUTOCLAIM).
- Once per event id, nearly. When a handler returns, the consumer marks the event processed for its group
  (`SET NX` with a TTL of `PROCESSED_TTL_SECONDS`) and acknowledges the entry in one transaction; an entry
  whose event is marked (a redelivery, or the provider sending the same notification twice) is acknowledged
  without calling the handler. The window: a consumer that dies after its handler's effect and before the
  mark runs the handler again on redelivery (so do two consumers handed two copies of one notification at
  the same moment, and a handler still busy with one event after `claim_idle_seconds`, when another
  consumer takes the entry over). Handlers must therefore be idempotent themselves, keyed by the event id
  (the notifier's `Notify` takes it as its dedupe key); the mark keeps the repeats rare and cheap. Redis
  failing between the effect and the mark opens no window: the consumer retries the mark until it answers.
- Poison entries end. A handler failing leaves its entry pending, to be tried again after
  `claim_idle_seconds`; when it fails on the `max_attempts`-th delivery (XPENDING's count), or an entry is
  found delivered more often than that without being acknowledged (it kills its consumer), the entry goes
  to `DEAD_LETTERS` with its fields, the group and why, and is acknowledged. An entry that does not decode,
  or whose event has no id, goes there at once.
- Bounded. Both streams are trimmed to about `MAX_LEN` entries. A group further behind than that loses
  the oldest entries it had not read (counted, and logged when a reclaim finds them gone).
- Durable across a restart of Redis when Redis keeps an append-only file (the embedded Valkey of
  `devstack.valkey` and the dev cluster's do, fsync every second); while Redis is unreachable a consumer
  retries with backoff and picks up where its group was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, cast

from athena.events.v1 import events_pb2
from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Gauge
from redis import exceptions as redis_errors

from mesh.redis import UNAVAILABLE, Redis, cancelling
from mesh.retry import until_reachable
from mesh.telemetry import inject_trace_context, traced

log = logging.getLogger(__name__)

STREAM = "athena:events"
DEAD_LETTERS = "athena:events:dead"
"""Where an event goes after `max_attempts` failed deliveries (with why), kept for an operator."""
MAX_LEN = 100_000
"""About how many entries the stream keeps (XADD MAXLEN ~): enough for every consumer group to catch up
after an outage of minutes at a high rate; older entries are trimmed."""
PROCESSED_TTL_SECONDS = 3 * 24 * 3600
"""How long a consumer group remembers it processed an event id: longer than any redelivery (a provider's
retries, an entry reclaimed after an outage of a day)."""

Entries = list[tuple[str, dict[str, str] | None]]
"""Stream entries as the decoding client answers them: (entry id, fields); fields are None for an entry
trimmed while it was pending (older servers answer XAUTOCLAIM so)."""
FAILURES: tuple[type[BaseException], ...] = (*UNAVAILABLE, redis_errors.RedisError)
"""What makes a consumer back off and start reading again: Redis unreachable, or answering an error (a
group lost with Redis's data answers NOGROUP until it is created again)."""

HANDLED = Counter("athena_events_handled_total", "Events whose handler completed.", ["group"])
DUPLICATES = Counter(
    "athena_events_duplicates_total",
    "Entries acknowledged without handling: their event was already processed by the group.",
    ["group"],
)
FAILED = Counter("athena_events_failed_total", "Handler failures (the entry is tried again).", ["group"])
RECLAIMED = Counter(
    "athena_events_reclaimed_total",
    "Entries taken over from a consumer that held them longer than the claim idle time.",
    ["group"],
)
DEAD_LETTERED = Counter(
    "athena_events_dead_lettered_total",
    "Entries moved to the dead-letter stream, by why: failed, unacknowledged, undecodable.",
    ["group", "reason"],
)
TRIMMED = Counter(
    "athena_events_trimmed_unhandled_total",
    "Pending entries found trimmed from the stream before the group acknowledged them (lost).",
    ["group"],
)
PENDING = Gauge(
    "athena_events_pending",
    "Entries delivered to the group's consumers and not acknowledged yet (XINFO GROUPS pending), sampled "
    "by each of the group's consumers every few seconds.",
    ["group"],
)
LAG = Gauge(
    "athena_events_lag",
    "Entries of the stream the group has not been delivered yet (XINFO GROUPS lag), sampled by the "
    "group's consumers every few seconds.",
    ["group"],
)


E = TypeVar("E", bound=Message)
"""The message type of a stream's events; it has a string field `id` (the dedupe key)."""


def encode(event: Message) -> dict[str, str]:
    return {"id": getattr(event, "id"), "event": json_format.MessageToJson(event, indent=None)}  # noqa: B009


def decode(fields: dict[str, str], message: type[E] = events_pb2.ProviderEvent) -> E:  # type: ignore[assignment]
    return json_format.Parse(fields["event"], message())


class EventBus:
    def __init__(self, redis: Redis, *, stream: str = STREAM, max_len: int = MAX_LEN) -> None:
        self._redis = redis
        self._stream = stream
        self._max_len = max_len

    async def publish(self, event: Message) -> str:
        """Appends `event`; answers its stream entry id. While tracing, in a PRODUCER span whose context the
        entry carries (field `traceparent`), for the consumer's span to link to."""
        fields = encode(event)
        with traced(
            f"send {self._stream}", SpanKind.PRODUCER, attributes=_messaging(self._stream, "send", _id(event))
        ):
            inject_trace_context(fields)
            entry = await self._redis.xadd(
                self._stream,
                fields,  # type: ignore[arg-type]
                maxlen=self._max_len,
                approximate=True,
            )
        return str(entry)


def _id(event: Message) -> str:
    return str(getattr(event, "id"))  # noqa: B009


def _messaging(stream: str, operation: str, event_id: str) -> dict[str, str]:
    """The messaging semantic conventions' attributes of a span sending or processing an event."""
    return {
        "messaging.system": "redis",
        "messaging.destination.name": stream,
        "messaging.operation.type": operation,
        "messaging.message.id": event_id,
    }


class _Undecodable(Exception):
    """An entry no handler can be given."""


def _event(fields: dict[str, str] | None, message: type[E]) -> E:
    if fields is None:
        raise _Undecodable("the entry was trimmed from the stream")
    try:
        event = decode(fields, message)
    except (KeyError, ValueError, json_format.ParseError) as exc:
        raise _Undecodable(f"undecodable: {type(exc).__name__}: {exc}") from exc
    if not getattr(event, "id", ""):
        raise _Undecodable("the event has no id (its dedupe key)")
    return event


class EventConsumer(Generic[E]):
    """One consumer of a consumer group of the event bus; `run` it as a task (see the module docstring for
    what it guarantees).

    `redis` must be a client of its own whose socket timeout is longer than `block_seconds` (a blocking
    read waits that long for news). Consumers of one `group` share the work; each needs a `consumer` name
    of its own (a pod's name): a consumer started again under its old name first finishes what it held.
    `handle` acts on one event (an exception is a failed attempt); `max_attempts` deliveries at most;
    `message`: the stream's event type (ProviderEvent on the event bus); `claim_idle_seconds`: how long
    an entry may stay unacknowledged before another consumer takes it over,
    which is also the delay before a failed one is tried again (longer than a handling ever takes);
    `batch`: entries per read; `stream`, `dead_letters`, `max_len`: the streams and their bound;
    `sample_seconds`: how often the consumer samples its group's `PENDING` and `LAG`.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        group: str,
        consumer: str,
        handle: Callable[[E], Awaitable[None]],
        message: type[E] = events_pb2.ProviderEvent,  # type: ignore[assignment]
        max_attempts: int = 5,
        claim_idle_seconds: float = 30,
        batch: int = 100,
        block_seconds: float = 5,
        stream: str = STREAM,
        dead_letters: str = DEAD_LETTERS,
        max_len: int = MAX_LEN,
        sample_seconds: float = 5,
    ) -> None:
        socket_timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
        if socket_timeout is not None and socket_timeout <= block_seconds:
            raise ValueError(
                f"the client's socket timeout ({socket_timeout} s) must be longer than block_seconds "
                f"({block_seconds} s)"
            )
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._redis = redis
        self._group = group
        self._consumer = consumer
        self._handle = handle
        self._message = message
        self._max_attempts = max_attempts
        self._claim_idle_ms = max(1, int(claim_idle_seconds * 1000))
        self._claim_every = claim_idle_seconds / 2
        """How often to look for stuck entries: they are taken over between 1 and 1.5 idle times."""
        self._batch = batch
        self._block_ms = max(1, int(min(block_seconds, self._claim_every) * 1000))
        self._stream = stream
        self._dead_letters = dead_letters
        self._max_len = max_len
        self._sample_every = sample_seconds

    def processed_key(self, event_id: str) -> str:
        """The key marking `event_id` processed by this consumer's group."""
        return f"{self._stream}:processed:{self._group}:{event_id}"

    async def run(self) -> None:
        """Forever: create the group if missing, finish this consumer's pending entries, then read new ones
        and take over stuck ones. Never raises but for cancellation; while Redis cannot answer it retries
        with backoff (one warning per retry)."""
        async for attempt in until_reachable(
            f"the event consumer {self._consumer} of group {self._group}", FAILURES, within=None
        ):
            with attempt:
                await self._consume()

    async def _consume(self) -> None:
        await self._create_group()
        await self._finish_own_pending()
        sampler = asyncio.create_task(self._sample_forever(), name=f"sample-{self._group}-{self._consumer}")
        try:
            await self._read_forever()
        finally:
            sampler.cancel()

    async def _read_forever(self) -> None:
        next_claim = 0.0
        while True:
            if time.monotonic() >= next_claim:
                await self._reclaim()
                next_claim = time.monotonic() + self._claim_every
            reply = await self._redis.xreadgroup(
                self._group, self._consumer, {self._stream: ">"}, count=self._batch, block=self._block_ms
            )
            if cancelling():  # see `mesh.redis.cancelling`
                raise asyncio.CancelledError
            for _, entries in cast(list[tuple[str, Entries]], reply or []):
                await self._process(entries)

    async def _sample_forever(self) -> None:
        """Sets `PENDING` and `LAG` of the group from XINFO GROUPS every `sample_seconds`, beside the
        reads (so a stuck handler does not stop them). A lag Redis cannot tell (entries were deleted) and
        a failed sample leave the gauges as they were."""
        while True:
            with contextlib.suppress(*FAILURES):
                for info in await self._redis.xinfo_groups(self._stream):
                    if info["name"] == self._group:
                        PENDING.labels(self._group).set(int(info["pending"]))
                        if info.get("lag") is not None:
                            LAG.labels(self._group).set(int(info["lag"]))
            await asyncio.sleep(self._sample_every)

    async def _create_group(self) -> None:
        """The group, reading from the oldest entry kept: an event published before the group existed (a
        first deployment, a Redis that lost its data) is still handled."""
        try:
            await self._redis.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _finish_own_pending(self) -> None:
        """Entries delivered to this consumer's name and not acknowledged (it stopped, crashed or lost
        Redis while holding them): handled now rather than after the claim idle time."""
        start = "0"
        while True:
            reply = await self._redis.xreadgroup(
                self._group, self._consumer, {self._stream: start}, count=self._batch
            )
            entries = [entry for _, page in cast(list[tuple[str, Entries]], reply or []) for entry in page]
            if not entries:
                return
            await self._process(entries)
            start = entries[-1][0]

    async def _reclaim(self) -> None:
        """Takes over every entry of the group idle longer than the claim idle time (its consumer died or
        hangs, or its handler failed and it waits for another try)."""
        cursor = "0-0"
        while True:
            reply = await self._redis.xautoclaim(
                self._stream,
                self._group,
                self._consumer,
                self._claim_idle_ms,
                start_id=cursor,
                count=self._batch,
            )
            cursor, entries = reply[0], cast(Entries, reply[1])
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:
                TRIMMED.labels(self._group).inc(len(deleted))
                log.error(
                    "pending entries of the event bus were trimmed before they were handled",
                    extra={"group": self._group, "count": len(deleted)},
                )
            if entries:
                RECLAIMED.labels(self._group).inc(len(entries))
                log.info(
                    "reclaimed stuck entries of the event bus",
                    extra={"group": self._group, "consumer": self._consumer, "count": len(entries)},
                )
                await self._process(entries)
            if cursor == "0-0":
                return

    async def _process(self, entries: Entries) -> None:
        """Handles `entries` in order. Each is checked just before: still this consumer's (a batch handled
        slowly may have been taken over meanwhile), how often delivered, and whether its event is marked."""
        for entry_id, fields in entries:
            try:
                event: E | None = _event(fields, self._message)
                error = ""
            except _Undecodable as exc:
                event, error = None, str(exc)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xpending_range(
                    self._stream,
                    self._group,
                    min=entry_id,
                    max=entry_id,
                    count=1,
                    consumername=self._consumer,
                )
                if event is not None:
                    pipe.exists(self.processed_key(_id(event)))
                held, *marked = await pipe.execute()
            if not held:
                continue  # acknowledged, or taken over by another consumer: theirs now
            attempts = int(held[0]["times_delivered"])
            if event is None:
                await self._dead_letter(entry_id, fields, error, "undecodable", attempts)
            elif marked[0]:
                DUPLICATES.labels(self._group).inc()
                await self._redis.xack(self._stream, self._group, entry_id)
            elif attempts > self._max_attempts:
                reason = f"delivered {attempts} times without being acknowledged"
                await self._dead_letter(entry_id, fields, reason, "unacknowledged", attempts)
            else:
                await self._attempt(entry_id, fields, event, attempts)

    async def _attempt(self, entry_id: str, fields: dict[str, str] | None, event: E, attempts: int) -> None:
        try:
            # A trace of its own for each delivery, linked to the publisher's (`mesh.telemetry.link_from`).
            with traced(
                f"process {self._stream}",
                SpanKind.CONSUMER,
                attributes={
                    **_messaging(self._stream, "process", _id(event)),
                    "messaging.consumer.group.name": self._group,
                },
                linked_from=fields or {},
                new_trace=True,
            ):
                await self._handle(event)
        except Exception as exc:  # a handler's failure, whatever it is, must not stop the consumer
            FAILED.labels(self._group).inc()
            error = f"{type(exc).__name__}: {exc}"
            if attempts >= self._max_attempts:
                await self._dead_letter(entry_id, fields, error, "failed", attempts)
            else:
                log.warning(
                    "an event's handler failed; it is tried again later",
                    exc_info=exc,
                    extra={"group": self._group, "event_id": _id(event), "attempt": attempts},
                )
            return
        await self._complete(entry_id, _id(event))
        HANDLED.labels(self._group).inc()

    async def _complete(self, entry_id: str, event_id: str) -> None:
        """Marks the event processed and acknowledges its entry, in one transaction. The handler's effect
        is done: while Redis cannot answer this keeps trying (with backoff) instead of leaving the entry to
        be handled again."""
        async for attempt in until_reachable(
            f"acknowledging event {event_id}", UNAVAILABLE, within=None, first_delay=0.1
        ):
            with attempt:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.set(self.processed_key(event_id), entry_id, nx=True, ex=PROCESSED_TTL_SECONDS)
                    pipe.xack(self._stream, self._group, entry_id)
                    await pipe.execute()

    async def _dead_letter(
        self, entry_id: str, fields: dict[str, str] | None, error: str, reason: str, attempts: int
    ) -> None:
        """Moves the entry to the dead-letter stream (its fields, plus where it came from and why) and
        acknowledges it, in one transaction."""
        letter: dict[Any, Any] = {  # redis-py's invariant field types
            **(fields or {}),
            "error": error,
            "stream": self._stream,
            "group": self._group,
            "entry": entry_id,
            "attempts": attempts,
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self._dead_letters, letter, maxlen=self._max_len, approximate=True)
            pipe.xack(self._stream, self._group, entry_id)
            await pipe.execute()
        DEAD_LETTERED.labels(self._group, reason).inc()
        log.error(
            "an event went to the dead letters",
            extra={"group": self._group, "entry": entry_id, "error": error, "attempts": attempts},
        )
