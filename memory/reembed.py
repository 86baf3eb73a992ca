"""Embedding in the background: new messages after they are stored, and everything stored when the model
changes.

Two loops run on every replica (`mesh.app` background tasks):

- `index_messages`: a message stored by a turn (`message_stored`) is indexed soon after, off the
  first-token path, in batches: its blind words and its vector are written together. If embedding fails (the
  model is down), the words are written alone and the message is found by them; the next sweep embeds it
  (and writes the words of a message the replica stopped before indexing). Conversation recall first
  awaits `indexed(user)`, which indexes that user's queued messages at once: what was said a moment ago
  is found (read your writes), at the cost of the recall, not of the turns.
- `sweep`: the job of the current model (`embedding_jobs`), user by user in id order. A replica takes the
  job's lease, embeds a user's memories and messages lacking a current vector in batches, records the user
  as done (the cursor, in PostgreSQL: a restart resumes after the last user done) and renews the lease;
  a replica whose lease lapsed stops, and another takes over from the cursor. When no user is left the job
  is finished and the other models' indexes are dropped. Old vectors are replaced in place (a row holds
  one vector): until its turn a row simply has no current vector, so recall finds it by its words, never
  by comparing vectors of two models. A job finished earlier is reopened at each start-up (cheap per user)
  so that messages whose embedding was lost are picked up.

Progress: `progress()` (the internal RPC MemoryService.GetEmbeddingStatus), the gauge
`athena_memory_reembed_users_done` / `_users_total`, the counter `athena_memory_texts_embedded_total` and a
log line per user and at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import Counter, Gauge

from memory.embedding_models import ReembedProgress, pending_batches
from memory.embeddings import Embedder
from memory.vectors import CurrentModel, PendingText, PostgresEmbeddingModels
from mesh.errors import AthenaError

log = logging.getLogger(__name__)

EMBEDDED = Counter(
    "athena_memory_texts_embedded_total",
    "Memories and messages given a vector of the current model.",
    ["kind"],
)
USERS_DONE = Gauge("athena_memory_reembed_users_done", "Users whose texts all have a current vector.")
USERS_TOTAL = Gauge("athena_memory_reembed_users_total", "Users with stored texts, when the job last looked.")

RETRY_SECONDS = 5.0
"""Pause after the embedding model or the database failed, before trying again."""
RELEASE_SECONDS = 2.0
"""Longest a stopping replica waits to give its lease up."""


def replica_name() -> str:
    """Who holds a lease: host, process and a random part (two services in one process are two holders)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


async def _now() -> None:
    """Work without waiting (no `before_work`)."""


class Reembedder:
    """The two loops, for one current model. Each piece of work (the messages stored meanwhile, a user of
    the sweep) first awaits `before_work`: the service's quiet moments (`mesh.quiet`)."""

    def __init__(
        self,
        store: PostgresEmbeddingModels,
        embedder: Embedder,
        current: CurrentModel,
        *,
        batch_size: int = 64,
        lease_seconds: float = 30.0,
        idle_seconds: float = 30.0,
        holder: str | None = None,
        before_work: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._embedder = embedder
        self.current = current
        self._batch_size = batch_size
        self._lease_seconds = lease_seconds
        self._idle_seconds = idle_seconds
        self.holder = holder or replica_name()
        self._stored: dict[str, list[str]] = {}
        """Messages queued for indexing, by user."""
        self._indexing: dict[str, asyncio.Task[None]] = {}
        """Users whose queued messages are being indexed, each with the work doing it."""
        self._wake = asyncio.Event()
        self._before_work = before_work or _now

    def message_stored(self, user_id: str, message_id: str) -> None:
        """Queues a stored message for embedding (returns at once)."""
        self._stored.setdefault(user_id, []).append(message_id)
        self._wake.set()

    async def progress(self) -> ReembedProgress:
        return await self._store.progress(self.current)

    async def index_messages(self) -> None:
        """Embeds queued messages, user by user, until cancelled."""
        while True:
            await self._wake.wait()
            await self._before_work()  # the gaps between calls (`mesh.quiet`): what waits meanwhile joins
            self._wake.clear()
            for user_id in list(self._stored):
                if (indexing := self._index_queued(user_id)) is not None:
                    await indexing

    async def indexed(self, user_id: str) -> None:
        """Returns once every message the user has stored so far is indexed (or was left to its words and
        the next sweep, the model being down): conversation recall finds what was said a moment ago. What
        is queued is indexed now, on the caller's time, not at the next quiet moment; a caller giving up
        (its deadline) does not stop it."""
        while True:
            indexing = self._indexing.get(user_id)
            if indexing is None or indexing.done():
                indexing = self._index_queued(user_id)
            if indexing is None:
                return
            await asyncio.shield(indexing)

    def _index_queued(self, user_id: str) -> asyncio.Task[None] | None:
        """Starts indexing the user's queued messages; None when none are queued."""
        message_ids = self._stored.pop(user_id, None)
        if not message_ids:
            return None
        # In a context of its own: not bound by the deadline of a recall that started it.
        indexing = asyncio.create_task(self._index(user_id, message_ids), context=contextvars.Context())
        self._indexing[user_id] = indexing
        indexing.add_done_callback(functools.partial(self._indexed, user_id))
        return indexing

    def _indexed(self, user_id: str, indexing: asyncio.Task[None]) -> None:
        if self._indexing.get(user_id) is indexing:
            del self._indexing[user_id]

    async def _index(self, user_id: str, message_ids: Sequence[str]) -> None:
        try:
            await self.embed_user(user_id, message_ids)
        except AthenaError as exc:  # left to the keyword stage and the next sweep
            log.warning(
                "stored messages could not be embedded now",
                extra={"error": exc.message, "messages": len(message_ids)},
            )
        except Exception:  # the same, but unexpected: logged with its traceback, the loop goes on
            log.exception("stored messages could not be embedded", extra={"messages": len(message_ids)})

    async def embed_user(self, user_id: str, message_ids: Sequence[str] | None = None) -> int:
        """Gives every memory and message of the user (only the messages `message_ids`, when given) a
        vector of the current model; returns how many were written."""
        written = 0
        while True:
            texts = await self._store.pending(self.current, user_id, self._batch_size, message_ids)
            if not texts:
                return written
            count = await self._embed_batch(user_id, texts)
            written += count
            if count == 0:  # every text changed while it was embedded: left to the next sweep
                return written

    async def _embed_batch(self, user_id: str, texts: Sequence[PendingText]) -> int:
        # A message's blind words are written here too, not when it is stored (off the turn's path); if the
        # model cannot embed now, they are written alone, so the keyword stage finds the message meanwhile.
        words = await self._store.words(
            user_id, [text.text if text.kind == "message" else "" for text in texts]
        )
        vectors: list[Sequence[float] | None] = [None] * len(texts)
        wanted = [i for i, text in enumerate(texts) if text.text.strip()]
        try:
            for start, end in pending_batches(len(wanted), self._batch_size):
                chunk = wanted[start:end]
                for i, vector in zip(
                    chunk, await self._embedder.embed([texts[i].text for i in chunk]), strict=True
                ):
                    vectors[i] = vector
        except AthenaError:
            await self._store.store_words(user_id, texts, words)
            raise
        written = await self._store.store(self.current, user_id, texts, vectors, words)
        for kind in ("memory", "message"):
            count = sum(1 for text in texts if text.kind == kind)
            if count:
                EMBEDDED.labels(kind).inc(count)
        return written

    async def sweep(self) -> None:
        """Works on the current model's job whenever this replica holds its lease, until it is finished or
        this is cancelled (then the lease is given up: another replica goes on at once)."""
        try:
            await self._sweep()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._store.release(self.current, self.holder), RELEASE_SECONDS)

    async def _sweep(self) -> None:
        while True:
            try:
                finished = await self.sweep_once()
            except AthenaError as exc:
                log.warning(
                    "re-embedding paused", extra={"error": exc.message, "model": str(self.current.model)}
                )
                await asyncio.sleep(RETRY_SECONDS)
                continue
            except Exception:
                log.exception("re-embedding failed; trying again", extra={"model": str(self.current.model)})
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if finished:
                return
            await asyncio.sleep(self._idle_seconds)

    async def sweep_once(self, max_users: int | None = None) -> bool:
        """Takes the lease and works through users from the cursor; True when the job is finished (by this
        replica or before), False when another replica holds it, the lease was lost, or `max_users` were
        done."""
        taken, after = await self._store.lease(self.current, self.holder, self._lease_seconds)
        if not taken:
            return (await self._store.progress(self.current)).finished
        done = 0
        while max_users is None or done < max_users:
            user_id = await self._store.next_user(after)
            if user_id is None:
                if await self._store.finish(self.current, self.holder):
                    progress = await self._store.progress(self.current)
                    self._report(progress)
                    log.info(
                        "re-embedding finished",
                        extra={"model": str(self.current.model), "embedded": progress.embedded},
                    )
                return True
            await self._before_work()
            embedded = await self.embed_user(user_id)
            if not await self._store.advance(
                self.current, self.holder, user_id, embedded, self._lease_seconds
            ):
                log.info("re-embedding lease lost; another replica goes on", extra={"holder": self.holder})
                return False
            after = user_id
            done += 1
            progress = await self._store.progress(self.current)
            self._report(progress)
            log.info(
                "re-embedded a user's texts",
                extra={
                    "model": str(self.current.model),
                    "embedded": embedded,
                    "users_done": progress.users_done,
                    "users_total": progress.users_total,
                },
            )
        return False

    @staticmethod
    def _report(progress: ReembedProgress) -> None:
        USERS_DONE.set(progress.users_done)
        USERS_TOTAL.set(progress.users_total)
