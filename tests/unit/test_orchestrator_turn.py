"""The turn loop with test doubles: the scripted model and the in-memory gateway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from doubles.memory import InMemoryGateway
from doubles.model import ScriptedModel, ScriptedReply
from doubles.outbox import InMemoryOutbox

from mesh.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from orchestrator import events
from orchestrator.catalog import Catalog
from orchestrator.model import ModelRequest
from orchestrator.records import NewTurn, Role, Scope
from orchestrator.tools import build_registry
from orchestrator.turn import CANCELLED_REASON, TurnRunner

USER = "user-1"


@pytest.fixture
def catalog() -> Catalog:
    return Catalog.load()


@pytest.fixture
def memory(catalog: Catalog) -> InMemoryGateway:
    return InMemoryGateway(agents=list(catalog))


def runner(catalog: Catalog, memory: InMemoryGateway, model: ScriptedModel, **kwargs: Any) -> TurnRunner:
    return TurnRunner(catalog, memory, model, build_registry(), **kwargs)


async def collect(turns: TurnRunner, text: str, agent_id: str = "athena", **kwargs: Any) -> list[Any]:
    return [event async for event in turns.run(USER, NewTurn(agent_id, text, **kwargs))]


def of_type(items: Sequence[Any], kind: type) -> list[Any]:
    return [item for item in items if isinstance(item, kind)]


async def test_a_turn_stores_the_message_first_streams_and_stores_the_answer(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    model = ScriptedModel([ScriptedReply("Hello there friend")])
    turns = runner(catalog, memory, model, offline_model=True, model_name=lambda _: "athena-offline")

    stream = turns.run(USER, NewTurn("athena", "hi"))
    started = await anext(stream)
    assert isinstance(started, events.ConversationStarted)
    # The user message is stored before the first event, in one call to memory.
    assert memory.calls == ["start_turn"]
    assert [m.content for m in memory.messages(started.conversation_id)] == ["hi"]
    assert (started.agent_id, started.model, started.offline_model) == ("athena", "athena-offline", True)
    rest = [event async for event in stream]

    assert isinstance(rest[0], events.MemoriesRecalled)
    assert [delta.text for delta in of_type(rest, events.TextDelta)] == ["Hello", " there", " friend"]
    completed = rest[-1]
    assert isinstance(completed, events.MessageCompleted)
    assert completed.content == "Hello there friend"
    assert completed.message_id == started.assistant_message_id
    assert completed.time_to_first_token is not None
    assert completed.time_to_first_token >= 0
    assert completed.usage.completion_tokens == 3
    [stored] = memory.assistant_messages(started.conversation_id)
    assert (stored.id, stored.agent_id, stored.content, stored.failed) == (
        started.assistant_message_id,
        "athena",
        "Hello there friend",
        False,
    )


async def test_the_prompt_holds_system_prompt_memories_history_and_templated_message(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    await memory.remember("my caloric goal is 2000 kcal", Scope.USER, "nutrition")
    model = ScriptedModel([ScriptedReply("first answer"), ScriptedReply("second answer")])
    turns = runner(catalog, memory, model)
    first = await collect(turns, "hello", agent_id="nutrition")
    conversation_id = first[0].conversation_id

    second = await collect(
        turns, "what is my caloric goal?", agent_id="nutrition", conversation_id=conversation_id
    )

    recalled = of_type(second, events.MemoriesRecalled)[0]
    assert [memory.text for memory in recalled.memories] == ["my caloric goal is 2000 kcal"]
    messages = model.requests[-1].messages
    nutrition = catalog.get("nutrition")
    assert nutrition is not None
    roles = ["system", "system", "system", "user", "assistant", "user"]
    assert [message["role"] for message in messages] == roles
    assert messages[0]["content"] == nutrition.system_prompt
    today = datetime.now(UTC).date()
    assert messages[1]["content"] == f"Today is {today.isoformat()} ({today:%A}), UTC."
    assert messages[2]["content"] == "Memories:\n- my caloric goal is 2000 kcal"
    assert [messages[3]["content"], messages[4]["content"]] == ["hello", "first answer"]
    assert messages[5]["content"] == nutrition.render_user_prompt("what is my caloric goal?")


async def test_memories_recalled_comes_before_the_first_delta_even_when_empty(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    model = ScriptedModel([ScriptedReply("x")])
    turn = await collect(runner(catalog, memory, model), "anything")
    kinds = [type(event) for event in turn]
    assert kinds == [
        events.ConversationStarted,
        events.MemoriesRecalled,
        events.TextDelta,
        events.MessageCompleted,
    ]
    assert turn[1].memories == ()
    # Without memories there is no `Memories:` message at all.
    assert [message["role"] for message in model.requests[0].messages] == ["system", "system", "user"]


async def test_a_multi_step_tool_loop_runs_tools_and_stores_their_records(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    model = ScriptedModel(
        [
            ScriptedReply.call("remember_memory", json.dumps({"text": "I like tea", "scope": "user"}), "c1"),
            ScriptedReply.call("recall_memory", json.dumps({"query": "tea"}), "c2"),
            ScriptedReply("You like tea."),
        ]
    )
    turn = await collect(runner(catalog, memory, model), "remember I like tea")

    calls = of_type(turn, events.ToolCallStarted)
    results = of_type(turn, events.ToolCallFinished)
    assert [call.name for call in calls] == ["remember_memory", "recall_memory"]
    assert [result.is_error for result in results] == [False, False]
    assert json.loads(results[1].result_json)["memories"][0]["text"] == "I like tea"
    assert [m.text for m in memory.memories] == ["I like tea"]
    # The model saw each call and its result before the next step.
    last = model.requests[-1].messages
    assert [m["role"] for m in last[-4:]] == ["assistant", "tool", "assistant", "tool"]
    assert last[-1]["tool_call_id"] == "c2"
    [stored] = memory.assistant_messages(turn[0].conversation_id)
    assert [record.name for record in stored.tool_calls] == ["remember_memory", "recall_memory"]
    assert stored.content == "You like tea."


async def test_invalid_arguments_and_failing_tools_become_error_results_the_model_sees(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    memory.fail_with("forget", Unavailable("memory is restarting"))
    model = ScriptedModel(
        [
            ScriptedReply.call("remember_memory", json.dumps({"text": "x", "scope": "everyone"})),
            ScriptedReply.call("remember_memory", "{not json"),
            ScriptedReply.call("forget_memory", json.dumps({"query": "x"})),
            ScriptedReply.call("no_such_tool", "{}"),
            ScriptedReply("Sorry."),
        ]
    )
    turn = await collect(runner(catalog, memory, model), "do things")

    results = of_type(turn, events.ToolCallFinished)
    assert [result.is_error for result in results] == [True, True, True, True]
    errors = [json.loads(result.result_json)["error"] for result in results]
    assert "scope" in errors[0]
    assert "everyone" in errors[0]
    assert "not valid JSON" in errors[1]
    assert errors[2] == "memory is restarting"
    assert "unknown tool" in errors[3]
    assert isinstance(turn[-1], events.MessageCompleted)
    assert memory.memories == []
    tool_messages = [m for m in model.requests[1].messages if m["role"] == "tool"]
    assert json.loads(tool_messages[0]["content"]) == {"error": errors[0]}


async def test_a_handoff_switches_the_answering_agent_and_its_memories(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    await memory.remember("focus blocks work best at 9am", Scope.AGENT, "focus")
    await memory.remember("athena-only focus note", Scope.AGENT, "athena")
    model = ScriptedModel(
        [
            ScriptedReply.call("handoff_to_focus", json.dumps({"reason": "plan my focus blocks"})),
            ScriptedReply("9am."),
        ]
    )
    turn = await collect(runner(catalog, memory, model), "when should I plan focus blocks?")

    [handoff] = of_type(turn, events.Handoff)
    assert (handoff.from_agent_id, handoff.to_agent_id, handoff.reason) == (
        "athena",
        "focus",
        "plan my focus blocks",
    )
    recalled = of_type(turn, events.MemoriesRecalled)
    assert [m.text for m in recalled[0].memories] == ["athena-only focus note"]
    assert [m.text for m in recalled[1].memories] == ["focus blocks work best at 9am"]
    assert of_type(turn, events.TextDelta)[0].agent_id == "focus"
    completed = turn[-1]
    assert completed.agent_id == "focus"
    [stored] = memory.assistant_messages(turn[0].conversation_id)
    assert stored.agent_id == "focus"
    [record] = stored.tool_calls
    assert record.name == "handoff_to_focus"
    assert record.handoff == handoff  # stored typed: clients never parse tool names
    [call] = of_type(turn, events.ToolCallStarted)
    assert call.handoff
    # The agent taking over answers with its own prompt and cannot hand off to itself.
    focus = catalog.get("focus")
    assert focus is not None
    second = model.requests[1]
    assert second.messages[0]["content"] == focus.system_prompt
    tools = {tool.name for tool in second.tools}
    assert "handoff_to_focus" not in tools
    assert "handoff_to_athena" in tools


async def test_handoff_to_a_disabled_agent_is_refused_to_the_model(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    memory.disabled.add("sme")
    model = ScriptedModel(
        [ScriptedReply.call("handoff_to_sme", json.dumps({"reason": "invoices"})), ScriptedReply("ok")]
    )
    turn = await collect(runner(catalog, memory, model), "ask sme about invoices")

    assert "handoff_to_sme" not in {tool.name for tool in model.requests[0].tools}
    [result] = of_type(turn, events.ToolCallFinished)
    assert result.is_error
    assert of_type(turn, events.Handoff) == []
    assert turn[-1].agent_id == "athena"


async def test_a_disabled_agent_refuses_the_turn_before_anything_is_stored(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    memory.disabled.add("nutrition")
    with pytest.raises(FailedPrecondition, match="nutrition"):
        await collect(runner(catalog, memory, ScriptedModel([])), "hi", agent_id="nutrition")
    assert memory.conversations == {}


async def test_an_agent_not_in_the_catalog_is_not_found(catalog: Catalog, memory: InMemoryGateway) -> None:
    with pytest.raises(NotFound, match="ghost"):
        await collect(runner(catalog, memory, ScriptedModel([])), "hi", agent_id="ghost")
    assert memory.calls == []


async def test_the_step_limit_stops_a_model_that_always_calls_tools(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    model = ScriptedModel(lambda request: ScriptedReply.call("recall_memory", json.dumps({"query": "loop"})))
    turns = runner(catalog, memory, model, max_steps=3)
    seen: list[Any] = []
    with pytest.raises(ResourceExhausted, match="3 model steps"):
        async for event in turns.run(USER, NewTurn("athena", "loop forever")):
            seen.append(event)

    assert len(model.requests) == 3
    assert len(of_type(seen, events.ToolCallFinished)) == 3
    [stored] = memory.assistant_messages(seen[0].conversation_id)
    assert stored.failed
    assert "3 model steps" in stored.error
    assert len(stored.tool_calls) == 3


async def test_a_model_failure_keeps_the_user_message_and_records_the_failed_turn(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    model = ScriptedModel([ScriptedReply(error=Unavailable("the model failed (HTTP 503) after 3 attempts"))])
    seen: list[Any] = []
    with pytest.raises(Unavailable, match="HTTP 503"):
        async for event in runner(catalog, memory, model).run(USER, NewTurn("athena", "hi")):
            seen.append(event)

    history = memory.messages(seen[0].conversation_id)
    assert [(m.role, m.content) for m in history] == [(Role.USER, "hi"), (Role.ASSISTANT, "")]
    assert history[1].failed
    [stored] = memory.assistant_messages(seen[0].conversation_id)
    assert "HTTP 503" in stored.error


async def test_cancelling_a_turn_mid_stream_records_what_was_said(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    model = ScriptedModel([ScriptedReply("one two three four five six seven eight")], chunk_delay=0.05)
    turns = runner(catalog, memory, model)
    seen: list[Any] = []
    deltas = asyncio.Event()

    async def consume() -> None:
        async for event in turns.run(USER, NewTurn("athena", "count")):
            seen.append(event)
            if len(of_type(seen, events.TextDelta)) == 2:
                deltas.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(deltas.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await turns.wait_background()

    [stored] = memory.assistant_messages(seen[0].conversation_id)
    assert stored.error == CANCELLED_REASON
    assert stored.content.startswith("one two")
    assert of_type(seen, events.MessageCompleted) == []


async def test_retrying_user_message_ids_are_idempotent(catalog: Catalog, memory: InMemoryGateway) -> None:
    turns = runner(catalog, memory, ScriptedModel([ScriptedReply("a"), ScriptedReply("b")]))
    first = await collect(turns, "hi", client_request_id="req-1")
    again = await collect(turns, "hi", client_request_id="req-1")
    assert first[0].user_message_id == again[0].user_message_id
    history = memory.messages(first[0].conversation_id)
    assert [m.content for m in history if m.role is Role.USER] == ["hi"]


async def test_a_failing_recall_degrades_to_an_answer_without_memories(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    memory.fail_with("recall", Unavailable("database restarting"))
    turn = await collect(runner(catalog, memory, ScriptedModel([ScriptedReply("ok")])), "hi")
    assert turn[1].memories == ()
    assert isinstance(turn[-1], events.MessageCompleted)


async def test_deadline_from_the_model_is_reported_and_recorded(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    def script(request: ModelRequest) -> ScriptedReply:
        return ScriptedReply(error=DeadlineExceeded("the model did not answer in time"))

    seen: list[Any] = []
    with pytest.raises(DeadlineExceeded):
        async for event in runner(catalog, memory, ScriptedModel(script)).run(USER, NewTurn("athena", "hi")):
            seen.append(event)
    [stored] = memory.assistant_messages(seen[0].conversation_id)
    assert stored.error == "the model did not answer in time"


async def test_closing_the_stream_early_records_the_turn_as_cancelled(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    turns = runner(catalog, memory, ScriptedModel([ScriptedReply("one two three")]))
    stream = turns.run(USER, NewTurn("athena", "hi"))
    started = await anext(stream)
    assert isinstance(await anext(stream), events.MemoriesRecalled)
    assert isinstance(await anext(stream), events.TextDelta)
    await stream.aclose()

    [stored] = memory.assistant_messages(started.conversation_id)
    assert (stored.content, stored.error) == ("one", CANCELLED_REASON)


async def test_an_agent_missing_from_memorys_catalog_is_refused(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    memory.agents = []
    with pytest.raises(FailedPrecondition, match="not available"):
        await collect(runner(catalog, memory, ScriptedModel([])), "hi")
    assert memory.conversations == {}


async def test_closing_the_stream_after_the_completion_keeps_the_answer_complete(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    turns = runner(catalog, memory, ScriptedModel([ScriptedReply("all of it")]))
    stream = turns.run(USER, NewTurn("athena", "hi"))
    events_seen = [await anext(stream) for _ in range(6)]  # started, recalled, 3 words, completed
    assert isinstance(events_seen[-1], events.MessageCompleted)
    await stream.aclose()  # the client went away right after the last event
    await turns.wait_background()

    [stored] = memory.assistant_messages(events_seen[0].conversation_id)
    assert (stored.content, stored.failed) == ("all of it", False)


async def test_a_repeated_turn_replays_its_answer_and_runs_nothing_again(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    model = ScriptedModel(
        [
            ScriptedReply.call("remember_memory", json.dumps({"text": "I like tea", "scope": "user"}), "c1"),
            ScriptedReply("Noted."),
        ]
    )
    turns = runner(catalog, memory, model)
    first = await collect(turns, "remember I like tea", client_request_id="req-1")
    again = await collect(turns, "remember I like tea", client_request_id="req-1")

    assert len(model.requests) == 2  # the first turn's two steps; the repeat called no model
    assert [m.text for m in memory.memories] == ["I like tea"]  # and ran no tool
    assert again[0] == first[0]  # the same conversation, message and answer ids
    assert [type(e) for e in again] == [
        events.ConversationStarted,
        events.MemoriesRecalled,
        events.ToolCallStarted,
        events.ToolCallFinished,
        events.TextDelta,
        events.MessageCompleted,
    ]
    assert of_type(again, events.ToolCallFinished) == of_type(first, events.ToolCallFinished)
    assert again[-1].content == first[-1].content == "Noted."
    assert len(memory.assistant_messages(first[0].conversation_id)) == 1


async def test_a_used_request_id_with_another_text_is_refused(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    model = ScriptedModel([ScriptedReply("ok")])
    first = await collect(runner(catalog, memory, model), "hi", client_request_id="req-2")
    with pytest.raises(InvalidArgument) as refused:
        await collect(runner(catalog, memory, model), "something else", client_request_id="req-2")
    assert refused.value.field == "client_request_id"
    assert len(memory.messages(first[0].conversation_id)) == 2  # nothing more stored


async def test_concurrent_repeats_of_a_turn_answer_it_once(catalog: Catalog, memory: InMemoryGateway) -> None:
    model = ScriptedModel([ScriptedReply("one two three four")], chunk_delay=0.02)
    turns = runner(catalog, memory, model)
    both = await asyncio.gather(
        collect(turns, "count", client_request_id="req-3"), collect(turns, "count", client_request_id="req-3")
    )
    assert len(model.requests) == 1
    assert [turn[-1].content for turn in both] == ["one two three four"] * 2
    assert both[0][0].assistant_message_id == both[1][0].assistant_message_id


async def test_a_turn_abandoned_by_its_answerer_is_taken_over_by_a_repeat(catalog: Catalog) -> None:
    now = [1000.0]
    memory = InMemoryGateway(agents=list(catalog), clock=lambda: now[0])
    # A replica stored the message, then died without answering (its lease is never renewed).
    abandoned = await memory.start_turn(
        NewTurn("athena", "hi", client_request_id="req-4"), 0, lease_seconds=15
    )
    model = ScriptedModel([ScriptedReply("here I am")])
    turns = runner(catalog, memory, model, lease_seconds=15)
    with pytest.raises(TimeoutError):  # still held: a repeat waits for it (here, until we stop waiting)
        async with asyncio.timeout(0.3):
            await collect(turns, "hi", client_request_id="req-4")
    now[0] += 16
    taken = await collect(turns, "hi", client_request_id="req-4")
    assert taken[0].assistant_message_id == abandoned.answer_id
    assert taken[-1].content == "here I am"


async def test_an_answer_memory_cannot_store_is_kept_in_the_outbox_and_the_turn_completes(
    catalog: Catalog, memory: InMemoryGateway
) -> None:
    outbox = InMemoryOutbox()
    memory.fail_with("append_assistant_message", Unavailable("the database is unavailable"))
    turn = await collect(runner(catalog, memory, ScriptedModel([ScriptedReply("kept")]), outbox=outbox), "hi")
    assert isinstance(turn[-1], events.MessageCompleted)
    [(user_id, conversation_id, kept)] = outbox.kept
    assert (user_id, conversation_id, kept.id, kept.content) == (
        USER,
        turn[0].conversation_id,
        turn[0].assistant_message_id,
        "kept",
    )
    outbox.down = True  # and when the outbox cannot keep it either, the turn fails as before
    with pytest.raises(Unavailable):
        await collect(runner(catalog, memory, ScriptedModel([ScriptedReply("lost")]), outbox=outbox), "hi")


async def test_a_long_turn_renews_its_lease(catalog: Catalog, memory: InMemoryGateway) -> None:
    model = ScriptedModel([ScriptedReply("slowly but surely")], chunk_delay=0.1)
    await collect(runner(catalog, memory, model, lease_seconds=0.12), "hi")
    assert "renew_turn" in memory.calls


class SlowRenewals(InMemoryGateway):
    """Renewals that take a while, recording whether each finished or was cancelled halfway."""

    def __init__(self, catalog: Catalog) -> None:
        super().__init__(agents=list(catalog))
        self.renewing = asyncio.Event()
        self.renewals: list[str] = []

    async def renew_turn(self, message_id: str, lease_seconds: float) -> None:
        self.renewing.set()
        try:
            await asyncio.sleep(0.3)
        except asyncio.CancelledError:
            self.renewals.append("cancelled")
            raise
        await super().renew_turn(message_id, lease_seconds)
        self.renewals.append("renewed")


async def test_a_turn_ending_during_a_lease_renewal_lets_it_finish(catalog: Catalog) -> None:
    memory = SlowRenewals(catalog)
    model = ScriptedModel([ScriptedReply("a b c d")], chunk_delay=0.05)
    turns = runner(catalog, memory, model, lease_seconds=0.06)
    events_ = await collect(turns, "hi")
    assert memory.renewing.is_set()  # the turn ended while a renewal was on its way
    assert isinstance(events_[-1], events.MessageCompleted)
    await asyncio.wait_for(turns.wait_background(), 2)
    assert memory.renewals
    assert "cancelled" not in memory.renewals
