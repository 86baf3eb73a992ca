"""Conversation recall on the real memory service: a past conversation is found by what was said in it,
for its owner only, within the agent and time window asked for."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import grpc
from athena.chat.v1 import chat_pb2
from athena.memory.v1 import memory_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from memory_fixtures import MemoryHarness, expect_status, memory_service, start_turn_request

__all__ = ["memory_service"]

Metadata = tuple[tuple[str, str], ...]

DINNER = "For dinner on weeknights I cook lentil soup with lots of garlic"
ANSWER = "Lentil soup is a fine weeknight dinner: plenty of fibre and protein"


async def converse(harness: MemoryHarness, md: Metadata, agent_id: str, text: str, answer: str) -> str:
    """One turn (the user's message and the agent's answer); returns the conversation id."""
    start = await harness.conversations.StartTurn(
        start_turn_request(agent_id=agent_id, text=text), metadata=md
    )
    await harness.conversations.AppendAssistantMessage(
        memory_pb2.AppendAssistantMessageRequest(
            conversation_id=start.conversation.id,
            message=chat_pb2.Message(
                id=start.answer_id,
                role=chat_pb2.ROLE_ASSISTANT,
                agent_id=agent_id,
                content=answer,
                status=chat_pb2.MESSAGE_STATUS_COMPLETE,
            ),
        ),
        metadata=md,
    )
    return start.conversation.id


async def recall(
    harness: MemoryHarness, md: Metadata, query: str, **fields: object
) -> Sequence[memory_pb2.RecalledMessage]:
    response = await harness.conversations.RecallConversations(
        memory_pb2.RecallConversationsRequest(query=query, **fields),  # type: ignore[arg-type]
        metadata=md,
    )
    return list(response.results)


async def test_a_past_conversation_is_found_by_what_was_said(memory_service: MemoryHarness) -> None:
    _, md = memory_service.user()
    dinner = await converse(memory_service, md, "nutrition", DINNER, ANSWER)
    await converse(
        memory_service, md, "focus", "I want two deep work blocks every morning", "Noted: 9-11 focus"
    )

    # At once: a recall first indexes what the user just said (in the background otherwise, at a quiet
    # moment of the service).
    results = await recall(memory_service, md, "what do I cook for dinner on weeknights?")
    best = results[0]
    assert best.conversation_id == dinner
    assert best.message.content == DINNER
    assert best.message.role == chat_pb2.ROLE_USER
    assert best.message.agent_id == "nutrition"
    assert best.message.created_at.seconds > 0
    assert best.stage == memory_pb2.RECALL_STAGE_VECTOR
    assert all(r.conversation_id == dinner for r in results), "the focus conversation is unrelated"

    # The agent's answer is found by its own words too.
    answers = await recall(memory_service, md, "fibre and protein")
    assert answers[0].message.content == ANSWER
    assert answers[0].message.role == chat_pb2.ROLE_ASSISTANT


async def test_another_users_identical_messages_are_never_recalled(memory_service: MemoryHarness) -> None:
    _, alice = memory_service.user()
    _, bob = memory_service.user()
    alice_conversation = await converse(memory_service, alice, "nutrition", DINNER, ANSWER)
    bob_conversation = await converse(memory_service, bob, "nutrition", DINNER, ANSWER)

    for md, own, other in (
        (alice, alice_conversation, bob_conversation),
        (bob, bob_conversation, alice_conversation),
    ):
        results = await recall(memory_service, md, DINNER)
        assert results[0].stage == memory_pb2.RECALL_STAGE_VECTOR
        assert {r.conversation_id for r in results} == {own}
        keyword = await recall(memory_service, md, "garlic lentil")
        assert keyword
        assert {r.conversation_id for r in keyword} == {own}
        assert other not in {r.conversation_id for r in keyword}

    _, carol = memory_service.user()  # nothing stored at all
    assert await recall(memory_service, carol, DINNER) == []


async def test_recall_keeps_to_the_agent_and_time_window_asked_for(memory_service: MemoryHarness) -> None:
    _, md = memory_service.user()
    nutrition = await converse(memory_service, md, "nutrition", DINNER, ANSWER)
    athena = await converse(
        memory_service, md, "athena", "Remind me what I eat for dinner: lentil soup", "Lentil soup."
    )

    only_nutrition = await recall(memory_service, md, "lentil soup for dinner", agent_id="nutrition")
    assert only_nutrition
    assert {r.conversation_id for r in only_nutrition} == {nutrition}

    now = datetime.now(UTC)
    since_yesterday = await recall(
        memory_service, md, "lentil soup for dinner", since=_timestamp(now - timedelta(days=1))
    )
    assert {r.conversation_id for r in since_yesterday} == {nutrition, athena}
    last_week = await recall(
        memory_service,
        md,
        "lentil soup for dinner",
        since=_timestamp(now - timedelta(days=14)),
        until=_timestamp(now - timedelta(days=7)),
    )
    assert last_week == []


async def test_a_window_ending_before_it_starts_is_refused(memory_service: MemoryHarness) -> None:
    _, md = memory_service.user()
    now = datetime.now(UTC)
    error = await expect_status(
        memory_service.conversations.RecallConversations(
            memory_pb2.RecallConversationsRequest(
                query="dinner", since=_timestamp(now), until=_timestamp(now)
            ),
            metadata=md,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "until" in (error.details() or "")


def _timestamp(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


async def test_the_conversation_asking_is_left_out(memory_service: MemoryHarness) -> None:
    """The question itself is stored before the tool searches: without the exclusion it would find itself."""
    _, md = memory_service.user()
    question = "What soup do I cook for dinner?"
    earlier = await converse(memory_service, md, "nutrition", DINNER, ANSWER)
    asking = await converse(memory_service, md, "focus", question, "Let me look")

    assert (await recall(memory_service, md, question))[0].conversation_id == asking, "found itself"
    left = await recall(memory_service, md, question, exclude_conversation_id=asking)
    assert left
    assert {r.conversation_id for r in left} == {earlier}

    error = await expect_status(
        recall(memory_service, md, question, exclude_conversation_id="not-a-uuid"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "exclude_conversation_id" in (error.details() or "")
