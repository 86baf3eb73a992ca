"""An event bus consumer as a process of its own, for the reliability tests of `test_event_bus.py` (they
SIGKILL it, or restart its Redis, in the middle of a burst).

Its handler records, in one transaction on the effects Redis, two things per event id: how many times its
effect ran (`<key>:runs`, a counter: a repeat shows) and the effect itself made idempotent by the event id
as real handlers are (`<key>:effects`, HSETNX with the consumer's name, as the notifier's dedupe key does).

    python tests/service/event_consumer_process.py --bus-url URL --effects-url URL --stream S --group G \\
        --consumer NAME --effects-key K [--claim-idle-seconds 1]
"""

from __future__ import annotations

import argparse
import asyncio

from athena.events.v1 import events_pb2

from mesh.events import EventConsumer
from mesh.redis import connect
from mesh.telemetry import configure_logging


async def main(arguments: argparse.Namespace) -> None:
    bus = connect(arguments.bus_url, 2.0)
    effects = connect(arguments.effects_url, 2.0)

    async def handle(event: events_pb2.ProviderEvent) -> None:
        async with effects.pipeline(transaction=True) as pipe:
            pipe.hincrby(f"{arguments.effects_key}:runs", event.id, 1)
            pipe.hsetnx(f"{arguments.effects_key}:effects", event.id, arguments.consumer)
            await pipe.execute()

    consumer = EventConsumer(
        bus,
        group=arguments.group,
        consumer=arguments.consumer,
        handle=handle,
        claim_idle_seconds=arguments.claim_idle_seconds,
        block_seconds=1.0,
        stream=arguments.stream,
        dead_letters=f"{arguments.stream}:dead",
    )
    await consumer.run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("bus-url", "effects-url", "stream", "group", "consumer", "effects-key"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--claim-idle-seconds", type=float, default=1.0)
    configure_logging("event-consumer", "INFO")
    asyncio.run(main(parser.parse_args()))
