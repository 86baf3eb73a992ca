"""Answers memory could not store, kept in a Redis stream until they are delivered.

A turn whose answer cannot be stored at its end (memory or PostgreSQL down) puts the answer here
(`RedisAnswerOutbox.put`, one XADD) and still completes: the person has read the answer, and it will be
stored. Every orchestrator replica runs `deliver_forever`, a consumer of one group, which hands each answer
to memory's `DeliverAnswer` (for the user it names, with the deployment's service key: the person's token
may have expired by then) until memory takes it, then acknowledges and deletes it. Delivery is idempotent by
message id, so an answer delivered twice (a consumer dying between delivering and acknowledging) is stored
once; entries of a consumer that died are claimed by another after `claim_idle_seconds`. An answer memory
refuses for good (its conversation was deleted meanwhile) is logged and dropped.

The stream survives a restart of a Redis that persists (an append-only file, as the dev overlay and
`make run` configure it).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis import exceptions as redis_errors

from mesh.errors import AthenaError, DeadlineExceeded, Unavailable
from mesh.redis import Redis, translated
from orchestrator.records import AssistantMessage, Handoff, ToolCallRecord

log = logging.getLogger(__name__)

STREAM = "athena:outbox:answers"
GROUP = "deliverers"
WHAT = "the answer outbox"

Deliver = Callable[[str, str, AssistantMessage], Awaitable[None]]
"""Stores (user id, conversation id, answer) in memory; raises like a memory call."""


class RedisAnswerOutbox:
    """`orchestrator.ports.AnswerOutbox` on a Redis stream, and its delivery loop."""

    def __init__(
        self,
        redis: Redis,
        deliver: Deliver,
        *,
        consumer: str,
        claim_idle_seconds: float = 30.0,
        retry_seconds: float = 1.0,
        block_seconds: float = 0.5,
    ) -> None:
        """`block_seconds`: how long a read waits for new answers; below the client's socket timeout, or
        the read is cut off as if the server were down."""
        self._redis = redis
        self._deliver = deliver
        self._consumer = consumer
        self._claim_idle_ms = int(claim_idle_seconds * 1000)
        self._retry_seconds = retry_seconds
        self._block_ms = max(1, int(block_seconds * 1000))

    async def put(self, user_id: str, conversation_id: str, message: AssistantMessage) -> None:
        entry: dict[Any, Any] = {
            "user_id": user_id,
            "conversation_id": conversation_id,
            "message": encode(message),
        }
        async with translated(WHAT):
            await self._redis.xadd(STREAM, entry)
        log.warning(
            "answer kept in the outbox until memory takes it",
            extra={"message_id": message.id, "conversation_id": conversation_id},
        )

    async def deliver_forever(self) -> None:
        """Delivers what is (or comes) in the outbox, for as long as the service runs."""
        group_ready = False
        while True:
            delivered = False
            try:
                if not group_ready:
                    await self._create_group()
                    group_ready = True
                delivered = await self._deliver_some()
            except Unavailable as exc:  # Redis down: nothing to do until it is back
                log.warning("the answer outbox is unreachable", extra={"error": exc.message})
            except redis_errors.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                group_ready = False  # a Redis that lost its data (no persistence) restarted
            if not delivered:
                await asyncio.sleep(self._retry_seconds)

    async def _create_group(self) -> None:
        try:
            async with translated(WHAT):
                await self._redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # BUSYGROUP: it exists (another replica, an earlier start)
                raise

    async def _deliver_some(self) -> bool:
        """One round: this consumer's unacknowledged entries, entries other consumers left idle, then new
        ones (waiting a little for them). True when anything was delivered."""
        async with translated(WHAT):
            mine = await self._redis.xreadgroup(GROUP, self._consumer, {STREAM: "0"}, count=20)
            claimed = await self._redis.xautoclaim(
                STREAM, GROUP, self._consumer, self._claim_idle_ms, start_id="0-0", count=20
            )
            entries = [*_entries(mine), *claimed[1]]
            if not entries:
                fresh = await self._redis.xreadgroup(
                    GROUP, self._consumer, {STREAM: ">"}, count=20, block=self._block_ms
                )
                entries = _entries(fresh)
        delivered = False
        for entry_id, fields in entries:
            if await self._hand_over(entry_id, fields):
                delivered = True
            else:
                break  # memory is still down: the rest waits too
        return delivered

    async def _hand_over(self, entry_id: str, fields: dict[str, str]) -> bool:
        """Delivers one entry; True when it left the outbox (stored, or refused for good)."""
        try:
            message = decode(fields["message"])
            await self._deliver(fields["user_id"], fields["conversation_id"], message)
        except (Unavailable, DeadlineExceeded) as exc:
            log.info("memory cannot take an answer yet", extra={"entry": entry_id, "error": exc.message})
            return False
        except (AthenaError, KeyError, ValueError) as exc:
            log.error(
                "an answer of the outbox cannot be stored; dropped",
                extra={"entry": entry_id, "error": str(exc)},
            )
        else:
            log.info("answer delivered from the outbox", extra={"message_id": message.id})
        async with translated(WHAT):
            await self._redis.xack(STREAM, GROUP, entry_id)
            await self._redis.xdel(STREAM, entry_id)
        return True


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """The entries of an XREADGROUP reply on the one stream."""
    entries: list[tuple[str, dict[str, str]]] = []
    for _stream, items in reply or ():
        entries.extend((entry_id, fields) for entry_id, fields in items if fields)
    return entries


def encode(message: AssistantMessage) -> str:
    return json.dumps(
        {
            "id": message.id,
            "agent_id": message.agent_id,
            "content": message.content,
            "error": message.error,
            "tool_calls": [
                {
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments_json": call.arguments_json,
                    "result_json": call.result_json,
                    "is_error": call.is_error,
                    "handoff": None
                    if call.handoff is None
                    else [call.handoff.from_agent_id, call.handoff.to_agent_id, call.handoff.reason],
                }
                for call in message.tool_calls
            ],
        },
        ensure_ascii=False,
    )


def decode(text: str) -> AssistantMessage:
    data = json.loads(text)
    calls: Sequence[dict[str, Any]] = data["tool_calls"]
    return AssistantMessage(
        id=data["id"],
        agent_id=data["agent_id"],
        content=data["content"],
        error=data["error"],
        tool_calls=tuple(
            ToolCallRecord(
                call_id=call["call_id"],
                name=call["name"],
                arguments_json=call["arguments_json"],
                result_json=call["result_json"],
                is_error=call["is_error"],
                handoff=Handoff(*call["handoff"]) if call["handoff"] else None,
            )
            for call in calls
        ),
    )
