"""Issue 17's acceptance through the whole mesh (`make run`'s stack, the offline model, the public API at
the edge): a fact told in passing to one agent is known to the others without any `remember`, and a changed
goal supersedes the old one, which the history shows closed. The background extraction is waited for by
polling the public API with a deadline, never by sleeping a fixed time."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from athena.account.v1 import account_pb2, account_pb2_grpc
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from athena.chat.v1 import chat_pb2, chat_pb2_grpc

from devstack.process import free_port
from devstack.stack import Ports, Stack, StackConfig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
Metadata = tuple[tuple[str, str], ...]
DEADLINE_SECONDS = 30.0


@dataclass
class Mesh:
    stack: Stack
    channel: grpc.aio.Channel

    async def sign_in(self, email: str) -> Metadata:
        auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        session = (await auth.DevLogin(auth_pb2.DevLoginRequest(email=email))).session
        return (("authorization", f"Bearer {session.access_token}"),)

    @property
    def account(self) -> account_pb2_grpc.AccountServiceStub:
        return account_pb2_grpc.AccountServiceStub(self.channel)

    async def chat(self, metadata: Metadata, agent: str, text: str) -> list[chat_pb2.ChatResponse]:
        chat = chat_pb2_grpc.ChatServiceStub(self.channel)
        call = chat.Chat(chat_pb2.ChatRequest(agent_id=agent, text=text), metadata=metadata, timeout=60)
        return [event async for event in call]

    async def memories(self, metadata: Metadata, *, history: bool = False) -> list[account_pb2.Memory]:
        listed = await self.account.ListMemories(
            account_pb2.ListMemoriesRequest(include_history=history), metadata=metadata
        )
        return list(listed.memories)


@pytest_asyncio.fixture(scope="module")
async def mesh() -> AsyncIterator[Mesh]:
    ports = Ports(**{f.name: free_port() for f in fields(Ports)})
    with tempfile.TemporaryDirectory(prefix="athena-facts-") as data:
        stack = Stack(StackConfig(data_dir=Path(data), ports=ports, offline_delay_ms=0))
        await asyncio.to_thread(stack.start)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports.edge}")
        try:
            yield Mesh(stack, channel)
        finally:
            await channel.close(grace=None)
            await asyncio.to_thread(stack.stop)


def answer(events: list[chat_pb2.ChatResponse]) -> str:
    return "".join(e.text_delta.text for e in events if e.HasField("text_delta"))


def tool_calls(events: list[chat_pb2.ChatResponse]) -> list[str]:
    return [e.tool_result.name for e in events if e.HasField("tool_result")]


async def eventually(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not (found := await check()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE_SECONDS} s: {what}")
        await asyncio.sleep(0.1)
    return found


async def learnt(mesh: Mesh, metadata: Metadata, words: str) -> account_pb2.Memory:
    async def found() -> account_pb2.Memory | None:
        return next((m for m in await mesh.memories(metadata) if words in m.text), None)

    return await eventually(found, f"a memory saying {words!r}")


async def test_told_in_passing_to_the_nutrition_coach_the_focus_coach_knows_it(mesh: Mesh) -> None:
    ada = await mesh.sign_in("ada-facts@example.com")
    told = await mesh.chat(ada, "nutrition", "Any quick dinner ideas? I'm vegetarian, by the way.")
    assert tool_calls(told) == []  # no remember: the fact is learnt after the turn
    fact = await learnt(mesh, ada, "vegetarian")
    assert fact.source == account_pb2.MEMORY_SOURCE_INFERRED
    assert fact.agent_id == "nutrition"
    assert fact.message_id
    assert fact.conversation_id
    assert "vegetarian" in answer(await mesh.chat(ada, "focus", "Am I vegetarian?"))
    # Another person's agents know nothing of it.
    bob = await mesh.sign_in("bob-facts@example.com")
    assert await mesh.memories(bob, history=True) == []
    assert "vegetarian" not in answer(await mesh.chat(bob, "focus", "Am I vegetarian?"))


async def test_a_new_goal_is_what_every_agent_answers_and_the_old_one_is_history(mesh: Mesh) -> None:
    ada = await mesh.sign_in("ada-goal@example.com")
    await mesh.chat(ada, "nutrition", "My daily calorie goal is 2,000 kcal.")
    old = await learnt(mesh, ada, "2,000 kcal")
    await mesh.chat(ada, "focus", "Heads up: my goal is now 1,800 kcal.")
    new = await learnt(mesh, ada, "1,800 kcal")
    for agent in ("athena", "nutrition", "focus"):
        said = answer(await mesh.chat(ada, agent, "What is my caloric goal?"))
        assert "1,800" in said, (agent, said)
        assert "2,000" not in said, (agent, said)
    history = await mesh.account.GetMemoryHistory(
        account_pb2.GetMemoryHistoryRequest(memory_id=new.id), metadata=ada
    )
    assert [(v.text, v.HasField("valid_to")) for v in history.versions] == [
        (new.text, False),
        (old.text, True),
    ]
    assert history.versions[1].valid_to == new.valid_from
    listed = await mesh.memories(ada, history=True)
    closed = next(m for m in listed if m.id == old.id)
    assert closed.HasField("valid_to")
    # Asked about the past, the agent is told the old goal with when it held.
    past = answer(await mesh.chat(ada, "nutrition", "What did my caloric goal use to be?"))
    assert "2,000" in past
    assert "until" in past
