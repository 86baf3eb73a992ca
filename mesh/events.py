"""The event bus: verified provider notifications on a Redis stream, for consumers to act on at least once.

The webhooks service publishes each `athena.events.v1.ProviderEvent` with `EventBus.publish` (XADD to
`STREAM`, trimmed to about `MAX_LEN` entries): field `id` is the event's id (its dedupe key), field `event`
the event as proto3 JSON, so an operator reads it with `redis-cli XRANGE athena:events - +`. Consumers read
it in consumer groups (see `EventConsumer`).
"""

from __future__ import annotations

from athena.events.v1 import events_pb2
from google.protobuf import json_format

from mesh.redis import Redis

STREAM = "athena:events"
DEAD_LETTERS = "athena:events:dead"
"""Where an event goes after `max_attempts` failed deliveries (with why), kept for an operator."""
MAX_LEN = 100_000
"""About how many entries the stream keeps (XADD MAXLEN ~): enough for every consumer group to catch up
after an outage of minutes at a high rate; older entries are trimmed."""


def encode(event: events_pb2.ProviderEvent) -> dict[str, str]:
    return {"id": event.id, "event": json_format.MessageToJson(event, indent=None)}


def decode(fields: dict[str, str]) -> events_pb2.ProviderEvent:
    return json_format.Parse(fields["event"], events_pb2.ProviderEvent())


class EventBus:
    def __init__(self, redis: Redis, *, stream: str = STREAM, max_len: int = MAX_LEN) -> None:
        self._redis = redis
        self._stream = stream
        self._max_len = max_len

    async def publish(self, event: events_pb2.ProviderEvent) -> str:
        """Appends `event`; answers its stream entry id."""
        entry = await self._redis.xadd(
            self._stream,
            encode(event),  # type: ignore[arg-type]
            maxlen=self._max_len,
            approximate=True,
        )
        return str(entry)
