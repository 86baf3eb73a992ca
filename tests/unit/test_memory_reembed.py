"""The background re-embedding's rules, over an in-memory job store: one replica at a time works on the
job (its lease), another takes over from the cursor once the lease lapses or is given up, every text is
embedded once, and queued messages are embedded without touching the rest."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from doubles.embedder import GatedEmbedder, HashingEmbedder

from memory.embedding_models import OFFLINE_EMBEDDING_MODEL, EmbeddingModel, ReembedProgress
from memory.reembed import Reembedder
from memory.vectors import CurrentModel, PendingText
from mesh.errors import Unavailable

MODEL = CurrentModel(2, EmbeddingModel(OFFLINE_EMBEDDING_MODEL, 16))


@dataclass
class Row:
    kind: str
    text: str
    model: int | None = 1
    """The model of its vector (1: the old one)."""


@dataclass
class FakeJobs:
    """`memory.vectors.PostgresEmbeddingModels` in memory, with a clock the test moves."""

    users: dict[str, dict[uuid.UUID, Row]]
    now: float = 0.0
    after: str | None = None
    users_done: int = 0
    embedded: int = 0
    leased_by: str | None = None
    lease_until: float = 0.0
    finished: bool = False
    writes: list[uuid.UUID] = field(default_factory=list)
    words_alone: list[uuid.UUID] = field(default_factory=list)
    """Messages whose words were written without a vector."""

    async def lease(self, current: CurrentModel, holder: str, seconds: float) -> tuple[bool, str | None]:
        if self.finished or (self.leased_by not in (None, holder) and self.lease_until > self.now):
            return False, None
        self.leased_by, self.lease_until = holder, self.now + seconds
        return True, self.after

    async def release(self, current: CurrentModel, holder: str) -> None:
        if self.leased_by == holder:
            self.leased_by = None

    async def next_user(self, after: str | None) -> str | None:
        return next((user for user in sorted(self.users) if after is None or user > after), None)

    async def advance(
        self, current: CurrentModel, holder: str, user_id: str, embedded: int, seconds: float
    ) -> bool:
        if self.leased_by != holder or self.finished:
            return False
        self.after, self.users_done, self.embedded = user_id, self.users_done + 1, self.embedded + embedded
        self.lease_until = self.now + seconds
        return True

    async def finish(self, current: CurrentModel, holder: str) -> bool:
        if self.leased_by != holder:
            return False
        self.finished, self.leased_by = True, None
        return True

    async def progress(self, current: CurrentModel) -> ReembedProgress:
        return ReembedProgress(
            current.model,
            self.users_done,
            len(self.users),
            self.embedded,
            self.finished,
            self.leased_by or "",
        )

    async def pending(
        self, current: CurrentModel, user_id: str, limit: int, message_ids: Sequence[str] | None = None
    ) -> list[PendingText]:
        rows = [
            PendingText(row.kind, row_id, row.text.encode(), row.text)
            for row_id, row in sorted(self.users[user_id].items())
            if row.model != current.id
            and (message_ids is None or (row.kind == "message" and str(row_id) in message_ids))
        ]
        return rows[:limit]

    async def store(
        self,
        current: CurrentModel,
        user_id: str,
        texts: Sequence[PendingText],
        vectors: Sequence[Sequence[float] | None],
        words: Sequence[list[bytes]],
    ) -> int:
        for text, vector in zip(texts, vectors, strict=True):
            assert vector is None or len(vector) == current.model.dimension
            self.users[user_id][text.id].model = current.id
            self.writes.append(text.id)
        return len(texts)

    async def store_words(
        self, user_id: str, texts: Sequence[PendingText], words: Sequence[list[bytes]]
    ) -> None:
        self.words_alone += [text.id for text in texts if text.kind == "message"]

    async def words(self, user_id: str, texts: Sequence[str]) -> list[list[bytes]]:
        return [[] for _ in texts]


def populated(users: int = 3, memories: int = 3, messages: int = 2) -> FakeJobs:
    return FakeJobs(
        {
            str(uuid.UUID(int=u + 1)): {
                uuid.uuid4(): Row("memory" if i < memories else "message", f"text {u} {i}")
                for i in range(memories + messages)
            }
            for u in range(users)
        }
    )


def replica(jobs: FakeJobs, embedder: HashingEmbedder, name: str) -> Reembedder:
    return Reembedder(jobs, embedder, MODEL, batch_size=2, lease_seconds=30, holder=name)  # type: ignore[arg-type]


async def test_one_replica_holds_the_job_and_another_resumes_from_its_cursor() -> None:
    jobs = populated()
    embedder = HashingEmbedder(16)
    first, second = replica(jobs, embedder, "a"), replica(jobs, embedder, "b")

    assert not await first.sweep_once(max_users=1)
    assert (jobs.users_done, jobs.embedded, jobs.leased_by) == (1, 5, "a")
    assert not await second.sweep_once(), "the lease is a's"
    assert jobs.users_done == 1
    assert embedder.texts == 5

    jobs.now += 31  # a stopped without giving the lease up: it lapses
    assert await second.sweep_once()
    assert (jobs.users_done, jobs.embedded, jobs.finished) == (3, 15, True)
    assert embedder.texts == 15, "every text embedded once"
    assert sorted(jobs.writes) == sorted({row_id for rows in jobs.users.values() for row_id in rows})
    assert await first.sweep_once(), "finished for everyone"


async def test_a_stopping_replica_gives_its_lease_up() -> None:
    jobs = populated(users=2)
    embedder = HashingEmbedder(16)
    first = replica(jobs, embedder, "a")
    await first.sweep_once(max_users=1)
    await jobs.release(MODEL, "a")
    assert await replica(jobs, embedder, "b").sweep_once()
    assert jobs.users_done == 2


async def test_stored_messages_are_embedded_and_nothing_else() -> None:
    jobs = populated(users=1, memories=2, messages=2)
    embedder = HashingEmbedder(16)
    worker = replica(jobs, embedder, "a")
    ((user_id, rows),) = jobs.users.items()
    message_id = next(row_id for row_id, row in rows.items() if row.kind == "message")
    indexing = asyncio.create_task(worker.index_messages())
    worker.message_stored(user_id, str(message_id))
    for _ in range(100):
        if jobs.writes:
            break
        await asyncio.sleep(0.01)
    indexing.cancel()
    assert jobs.writes == [message_id]
    assert [row.model for row in rows.values() if row.kind == "memory"] == [1, 1], "left to the sweep"


async def _never() -> None:
    await asyncio.Event().wait()


def message_ids(jobs: FakeJobs, user_id: str) -> list[uuid.UUID]:
    return [row_id for row_id, row in jobs.users[user_id].items() if row.kind == "message"]


async def test_what_a_user_just_said_is_indexed_when_they_recall_without_waiting_for_quiet() -> None:
    jobs = populated(users=2, memories=1, messages=1)
    worker = Reembedder(jobs, HashingEmbedder(16), MODEL, holder="a", before_work=_never)  # type: ignore[arg-type]
    mine, other = sorted(jobs.users)
    (said,), (theirs,) = message_ids(jobs, mine), message_ids(jobs, other)
    indexing = asyncio.create_task(worker.index_messages())  # held: no quiet moment comes
    worker.message_stored(mine, str(said))
    worker.message_stored(other, str(theirs))

    await worker.indexed(mine)

    assert jobs.writes == [said], "the caller's own messages only; the other user's wait for quiet"
    await worker.indexed(mine)  # nothing queued: returns at once
    assert jobs.writes == [said]
    indexing.cancel()


async def test_a_recall_waits_for_the_indexing_under_way_and_its_caller_giving_up_does_not_stop_it() -> None:
    jobs = populated(users=1, memories=0, messages=2)
    embedder = GatedEmbedder(16, allowed=0)
    worker = Reembedder(jobs, embedder, MODEL, holder="a")  # type: ignore[arg-type]
    ((user_id, _),) = jobs.users.items()
    first, second = message_ids(jobs, user_id)
    worker.message_stored(user_id, str(first))
    impatient = asyncio.create_task(worker.indexed(user_id))
    for _ in range(10):
        await asyncio.sleep(0)
    assert embedder.held, "the first message's embedding is under way"
    worker.message_stored(user_id, str(second))  # stored while the first is being indexed
    patient = asyncio.create_task(worker.indexed(user_id))
    await asyncio.sleep(0)

    impatient.cancel()  # its deadline
    embedder.release()
    await patient

    assert sorted(jobs.writes) == sorted([first, second]), "both indexed, the first despite the cancel"
    assert embedder.texts == 2, "each once"


async def test_a_message_the_model_cannot_embed_now_keeps_its_words() -> None:
    jobs = populated(users=1, memories=1, messages=2)
    embedder = HashingEmbedder(16)
    embedder.down = True
    worker = replica(jobs, embedder, "a")
    ((user_id, rows),) = jobs.users.items()
    messages = sorted(row_id for row_id, row in rows.items() if row.kind == "message")

    with pytest.raises(Unavailable):
        await worker.embed_user(user_id, [str(message) for message in messages])

    assert sorted(jobs.words_alone) == messages, "found by their words until the next sweep"
    assert jobs.writes == [], "no vector written"
