"""Automatic memory: after each completed turn, the durable facts the person stated are learnt in the
background, off the turn's path.

How a turn becomes facts:

1. `ConversationServicer` stores a completed answer (AppendAssistantMessage, or the outbox's DeliverAnswer)
   and then queues a `FactExtractionJob` (ids only: the words stay sealed in PostgreSQL) on the Redis
   stream `MEMORY_EXTRACTION_STREAM` with `FactJobs.queue_soon`, in a task of its own. The answer has
   streamed by then, so nothing here adds to a turn's first token, and the call storing it does not wait
   for Redis either; a job that cannot be queued (Redis down) is logged and counted, never an error of the
   turn (that turn's facts are then not learnt).
2. A consumer of this service (`mesh.events.EventConsumer`, group `MEMORY_EXTRACTION_CONSUMER_GROUP`)
   takes the job: at least once, marked processed per answer id, a failed attempt tried again after
   `MEMORY_EXTRACTION_RETRY_SECONDS`, and after `MEMORY_EXTRACTION_MAX_ATTEMPTS` deliveries moved to
   `<stream>:dead` with the reason (model unreachable, error status, malformed answer). Jobs survive a
   restart of the service (they wait in Redis).
3. `FactLearner.handle` (unless the person turned learning off: `learns_facts`, AccountService
   SetMemorySettings) reads the turn's user message, asks the chat model (`FactExtractor`: the fixed
   prompt of `memory.facts`, structured output by JSON schema, answer checked strictly) and reconciles each
   fact with the person's memories (`PostgresMemoryStore.reconcile`, rules in `memory.facts`): add, update
   (old version closed, new one linking to it), invalidate, or nothing. Every step is idempotent per
   (message, key), so a redelivered job changes nothing twice; a malformed answer changes nothing at all
   (it is checked whole before anything is written).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from typing import Any

from athena.memory.v1 import memory_pb2
from prometheus_client import Counter

from memory.embeddings import Embedder
from memory.facts import (
    EXTRACTION_PROMPT,
    FactCandidate,
    FactPolicy,
    MalformedExtraction,
    parse_extraction,
    response_format,
)
from memory.stores import MemoryStore
from mesh.events import EventBus
from mesh.model_api import ModelApi, ModelApiError
from mesh.redis import Redis

log = logging.getLogger(__name__)

DECISIONS = Counter(
    "athena_memory_fact_decisions_total", "Extracted facts by what reconciling them did.", ["action"]
)
QUEUE_FAILURES = Counter(
    "athena_memory_fact_jobs_unqueued_total", "Completed turns whose extraction job could not be queued."
)
EXTRACTION_FAILURES = Counter(
    "athena_memory_fact_extraction_failures_total",
    "Extraction attempts that failed (the job is tried again, then dead-lettered).",
    ["reason"],
)


class FactJobs:
    """Queues extraction jobs on the stream."""

    def __init__(self, redis: Redis, stream: str) -> None:
        self._bus = EventBus(redis, stream=stream)
        self._queueing: set[asyncio.Task[None]] = set()

    def queue_soon(self, user_id: str, conversation_id: str, answer_id: str, agent_id: str) -> None:
        """`queue` in a task of its own: the caller's answer never waits for Redis (not even a slow or
        unreachable one). A job still being queued when the service stops is lost with it."""
        task = asyncio.create_task(self.queue(user_id, conversation_id, answer_id, agent_id))
        self._queueing.add(task)
        task.add_done_callback(self._queueing.discard)

    async def queue(self, user_id: str, conversation_id: str, answer_id: str, agent_id: str) -> None:
        """Queues the extraction of the turn answered by `answer_id`; never raises (a turn is complete
        whether or not its facts are learnt)."""
        job = memory_pb2.FactExtractionJob(
            id=answer_id,
            user_id=user_id,
            conversation_id=conversation_id,
            answer_id=answer_id,
            agent_id=agent_id,
        )
        try:
            await self._bus.publish(job)
        except Exception as exc:  # noqa: BLE001 (Redis unreachable or failing: the turn goes on)
            QUEUE_FAILURES.inc()
            log.warning(
                "a turn's fact extraction could not be queued; its facts are not learnt",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )


class FactExtractor:
    """Asks an OpenAI-compatible chat model which durable facts a message states."""

    def __init__(self, api: ModelApi, model: str, *, timeout: float = 30.0) -> None:
        self._api = api
        self._model = model
        self._timeout = timeout

    def request(self, text: str) -> dict[str, Any]:
        """The Chat Completions body for `text` (the person's message alone)."""
        return {
            "model": self._model,
            "messages": [
                {"role": "system", "content": EXTRACTION_PROMPT},
                {"role": "user", "content": text},
            ],
            "response_format": response_format(),
            "temperature": 0,
            "stream": False,
        }

    async def extract(self, text: str) -> list[FactCandidate]:
        """The facts, checked; raises `ModelApiError` or `MalformedExtraction`."""
        async with self._api.post(
            "/chat/completions", self.request(text), read_timeout=self._timeout
        ) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                raise MalformedExtraction("the API's answer is not JSON") from None
        try:
            message = body["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            raise MalformedExtraction("the API's answer has no choices[0].message") from None
        if not isinstance(message, dict):
            raise MalformedExtraction("choices[0].message is not an object")
        if message.get("refusal"):
            raise MalformedExtraction("the model refused")
        return parse_extraction(message.get("content"))


class FactLearner:
    """Handles extraction jobs (see the module docstring)."""

    def __init__(
        self,
        store: MemoryStore,
        embedder: Embedder,
        extractor: FactExtractor,
        policy: FactPolicy,
        *,
        before_work: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._extractor = extractor
        self._policy = policy
        self._before_work = before_work

    async def handle(self, job: memory_pb2.FactExtractionJob) -> None:
        if self._before_work is not None:
            await self._before_work()  # the service's quiet moments (`mesh.quiet`): turns come first
        if not await self._store.learns_facts(job.user_id):
            return  # the person turned learning off
        origin = await self._store.stated(job.user_id, job.answer_id)
        if origin is None or not origin.message.content.strip():
            return  # the conversation was deleted meanwhile (or the message said nothing)
        try:
            candidates = await self._extractor.extract(origin.message.content)
        except MalformedExtraction as exc:
            EXTRACTION_FAILURES.labels("malformed").inc()
            raise exc
        except ModelApiError as exc:
            EXTRACTION_FAILURES.labels(type(exc).__name__).inc()
            raise exc
        if not candidates:
            return
        embeddings = await self._embedder.embed([candidate.text for candidate in candidates])
        actions: Tally[str] = Tally()
        for candidate, embedding in zip(candidates, embeddings, strict=True):
            decision = await self._store.reconcile(job.user_id, candidate, embedding, origin, self._policy)
            DECISIONS.labels(decision.action.value).inc()
            actions[decision.action.value] += 1
        log.info("facts learnt from a turn", extra={"answer_id": job.answer_id, **actions})
