"""One chat turn: a user message in, a stream of `orchestrator.events` out (SPEC §4).

    start the turn in memory (agent check, user message stored, history, memories recalled meanwhile)
    → ConversationStarted → MemoriesRecalled
    → up to `max_steps` model steps: TextDelta*, then for each tool call ToolCallStarted/ToolCallFinished
      (a handoff also emits Handoff and MemoriesRecalled for the agent taking over)
    → store the assistant message → MessageCompleted

If the turn fails or is cancelled after its user message was stored, the assistant message is stored
anyway with the error and what was produced so far (the conversation shows the failed turn), in a task
the cancellation cannot interrupt; then the error goes on to the caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC

from tenacity import AsyncRetrying, retry_if_result, wait_exponential

from mesh import genai
from mesh.errors import (
    AthenaError,
    DeadlineExceeded,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from mesh.metrics import exemplar
from orchestrator import prompt
from orchestrator.catalog import AgentSpec, Catalog
from orchestrator.embedding import TurnEmbedder
from orchestrator.events import (
    ConversationStarted,
    MemoriesRecalled,
    MessageCompleted,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnEvent,
)
from orchestrator.gate import StartLimit
from orchestrator.metrics import TIME_TO_FIRST_TOKEN, TOKENS, TURN_DURATION
from orchestrator.model import (
    ChatMessage,
    ChatModel,
    ModelRequest,
    ModelToolCall,
    StepFinished,
    TextChunk,
    ToolSpec,
)
from orchestrator.ports import AnswerOutbox, MemoryGateway
from orchestrator.records import (
    AssistantMessage,
    Handoff,
    HistoryMessage,
    Memory,
    NewTurn,
    TextEmbedding,
    ToolCallRecord,
    TurnStart,
    TurnState,
    Usage,
)
from orchestrator.tools.handoff import handoff_target, handoff_tool
from orchestrator.tools.registry import ToolContext, ToolOutcome, ToolRegistry, error_outcome

log = logging.getLogger(__name__)

CANCELLED_REASON = "the turn was cancelled before it finished"
INTERNAL_REASON = "the turn failed because of an internal error"


@dataclass
class _Progress:
    """What a turn has produced so far (stored as the failed message if it stops)."""

    conversation_id: str
    message_id: str
    agent: AgentSpec
    user_id: str
    text: list[str] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    time_to_first_token: float | None = None
    stored: bool = False
    """Whether the complete answer is stored (nothing may overwrite it as failed afterwards)."""

    def message(self, error: str = "") -> AssistantMessage:
        return AssistantMessage(
            self.message_id, self.agent.id, "".join(self.text), tuple(self.tool_calls), error=error
        )


class TurnRunner:
    """Runs turns; one instance serves every call (it keeps no per-turn state)."""

    def __init__(
        self,
        catalog: Catalog,
        memory: MemoryGateway,
        model: ChatModel,
        tools: ToolRegistry,
        *,
        model_name: Callable[[str], str] = lambda catalog_model: catalog_model,
        offline_model: bool = False,
        max_steps: int = 8,
        history_messages: int = 20,
        recall_k: int = 8,
        lease_seconds: float = 6.0,
        outbox: AnswerOutbox | None = None,
        embedder: TurnEmbedder | None = None,
        start_limit: StartLimit | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._catalog = catalog
        self._memory = memory
        self._model = model
        self._tools = tools
        self._model_name = model_name
        self._offline_model = offline_model
        self._max_steps = max_steps
        self._history_messages = history_messages
        self._recall_k = recall_k
        self._lease_seconds = lease_seconds
        self._outbox = outbox
        self._embedder = embedder
        self._start_limit = start_limit
        self._clock = clock
        self._background: set[asyncio.Task[None]] = set()
        """Writes a turn's end must not cancel: a failed turn's record, a lease renewal on its way."""

    def embedding(self, turn: NewTurn) -> asyncio.Task[TextEmbedding | None] | None:
        """Starts embedding the turn's text for memory's recall (`orchestrator.embedding`), to run while the
        turn is admitted; None when memory embeds it. `run` waits for it; cancel it if `run` is not called."""
        if self._embedder is None:
            return None
        return asyncio.create_task(self._embedder.embed(turn.text), name="embed-turn")

    async def run(
        self, user_id: str, turn: NewTurn, embedding: Awaitable[TextEmbedding | None] | None = None
    ) -> AsyncGenerator[TurnEvent, None]:
        """The events of `user_id`'s turn (`embedding`: its text's, as `embedding` started it). Field rules
        (lengths, ids) are the contract's, checked before a request reaches here; the agent must be in this
        service's catalog (NotFound otherwise)."""
        started = self._clock()
        agent = self._agent(turn.agent_id)
        text = turn.text.strip()
        if embedding is not None:
            turn = replace(turn, embedding=await embedding)
        # One memory round trip stores the message and recalls for it (memory reads both at once, and
        # nothing reaches the model before the message is stored).
        start = await self._start(turn)
        if start.state is TurnState.DONE:
            async with aclosing(self._replay(start, agent)) as replayed:
                async for event in replayed:
                    yield event
            return
        progress = _Progress(start.conversation_id, start.answer_id, agent, user_id)
        lease = asyncio.create_task(self._hold(start.message_id), name=f"hold-turn-{start.message_id}")
        cancelled = False
        try:
            yield self._started(start, agent, progress.message_id)
            if start.recall_failed:
                log.warning("recall failed; answering without memories")
            memories = list(start.memories)
            yield MemoriesRecalled(start.memories)
            context = ToolContext(
                user_id=user_id, agent_id=agent.id, memory=self._memory, conversation_id=start.conversation_id
            )
            async with aclosing(
                self._answer(
                    context, text, progress, start.enabled_agent_ids, memories, start.history, started
                )
            ) as events:
                async for event in events:
                    yield event
        except (asyncio.CancelledError, GeneratorExit):
            cancelled = True
            if not progress.stored:  # closed after MessageCompleted: the answer is whole, and stored
                await self._store_failed(progress, CANCELLED_REASON)
            raise
        except AthenaError as exc:
            await self._store_failed(progress, exc.message)
            raise
        except Exception:
            await self._store_failed(progress, INTERNAL_REASON)
            raise
        finally:
            lease.cancel()
            self._record(progress, started, cancelled=cancelled)

    def _record(self, progress: _Progress, started: float, *, cancelled: bool) -> None:
        """The turn's duration and tokens, once at its end (its first token was recorded as it came)."""
        agent, model = progress.agent.id, self._model_name(progress.agent.model)
        outcome = "ok" if progress.stored else "cancelled" if cancelled else "error"
        TURN_DURATION.labels(agent, model, outcome).observe(self._clock() - started, exemplar())
        TOKENS.labels(agent, model, "input").inc(progress.usage.prompt_tokens)
        TOKENS.labels(agent, model, "output").inc(progress.usage.completion_tokens)

    async def _start(self, turn: NewTurn) -> TurnStart:
        """The turn as memory has it; a repeat of a turn another caller is answering waits until it is
        done (then replays it) or abandoned (then answers it), within the caller's deadline. The waiting
        policy is made only then: around every turn, it cost the turn's start ~130 µs."""
        arguments = (turn, self._history_messages, self._lease_seconds, self._recall_k)
        answers = [await self._ask_memory(arguments)]
        if answers[0].state is not TurnState.RUNNING:
            return answers[0]

        async def ask() -> TurnStart:  # the answer in hand is the policy's first attempt
            return answers.pop() if answers else await self._ask_memory(arguments)

        waiting = AsyncRetrying(
            retry=retry_if_result(lambda start: start.state is TurnState.RUNNING),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            before_sleep=lambda _: log.info("the turn is being answered elsewhere; waiting for it"),
        )
        start: TurnStart = await waiting(ask)
        return start

    async def _ask_memory(self, arguments: tuple[NewTurn, int, float, int]) -> TurnStart:
        """Memory's `StartTurn`, within the limit of turns starting at once (`orchestrator.gate`)."""
        if self._start_limit is None:
            return await self._memory.start_turn(*arguments)
        async with self._start_limit.slot():
            return await self._memory.start_turn(*arguments)

    async def _hold(self, message_id: str) -> None:
        """Renews the turn's lease while it runs, so nobody takes it over. A renewal on its way when the
        turn ends is let finish: cancelled, memory's write stopped halfway (its transaction rolled back and
        its connection reset, an error in its log for every turn that ended during a renewal)."""
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            renewal = asyncio.create_task(self._renew(message_id), name=f"renew-turn-{message_id}")
            self._background.add(renewal)
            renewal.add_done_callback(self._background.discard)
            await asyncio.shield(renewal)

    async def _renew(self, message_id: str) -> None:
        try:
            await self._memory.renew_turn(message_id, self._lease_seconds)
        except AthenaError as exc:  # the lease lapses at worst: a repeat would answer again
            log.warning("renewing a turn's lease failed", extra={"error": exc.message})

    def _started(self, start: TurnStart, agent: AgentSpec, answer_id: str) -> ConversationStarted:
        return ConversationStarted(
            conversation_id=start.conversation_id,
            user_message_id=start.message_id,
            assistant_message_id=answer_id,
            agent_id=agent.id,
            model=self._model_name(agent.model),
            offline_model=self._offline_model,
            title=start.title,
        )

    async def _replay(self, start: TurnStart, agent: AgentSpec) -> AsyncGenerator[TurnEvent, None]:
        """The events of a turn answered before, from its stored answer: nothing runs again."""
        answer = start.answer
        assert answer is not None
        yield self._started(start, agent, answer.id)
        yield MemoriesRecalled(())
        speaking = agent.id
        for call in answer.tool_calls:
            yield ToolCallStarted(
                call.call_id, call.name, call.arguments_json, speaking, handoff=call.handoff is not None
            )
            yield ToolCallFinished(call.call_id, call.name, call.result_json, call.is_error)
            if call.handoff is not None:
                yield call.handoff
                speaking = call.handoff.to_agent_id
        if answer.content:
            yield TextDelta(answer.content, answer.agent_id)
        if answer.failed:
            raise FailedPrecondition(
                f"this message was answered before and that answer stopped ({answer.error}); "
                "send it again as a new message"
            )
        answered_by = self._catalog.get(answer.agent_id) or agent
        yield MessageCompleted(
            message_id=answer.id,
            agent_id=answer.agent_id,
            model=self._model_name(answered_by.model),
            usage=Usage(),
            time_to_first_token=None,
            content=answer.content,
        )

    async def _store(self, progress: _Progress, message: AssistantMessage, *, detached: bool = False) -> None:
        """Stores the answer; when memory cannot take it now, the outbox keeps it until it can."""
        try:
            await self._memory.append_assistant_message(progress.conversation_id, message, detached=detached)
        except (Unavailable, DeadlineExceeded):
            if self._outbox is None:
                raise
            await self._outbox.put(progress.user_id, progress.conversation_id, message)

    def _agent(self, agent_id: str) -> AgentSpec:
        agent = self._catalog.get(agent_id)
        if agent is None:
            raise NotFound(f"agent {agent_id!r} does not exist")
        if not agent.enabled:
            raise FailedPrecondition(f"agent {agent.id!r} is not available")
        return agent

    async def _recall(self, agent: AgentSpec, text: str) -> list[Memory]:
        """Memories for the prompt; a failing recall degrades the answer rather than failing the turn."""
        try:
            return await self._memory.recall(text, agent.id, self._recall_k)
        except AthenaError as exc:
            log.warning("recall failed; answering without memories", extra={"error": exc.message})
            return []

    async def _answer(
        self,
        context: ToolContext,
        text: str,
        progress: _Progress,
        enabled: frozenset[str],
        memories: list[Memory],
        history: Sequence[HistoryMessage],
        started: float,
    ) -> AsyncGenerator[TurnEvent, None]:
        transcript: list[ChatMessage] = []
        for _ in range(self._max_steps):
            agent = progress.agent
            model = self._model_name(agent.model)
            model_request = ModelRequest(
                model=model,
                messages=prompt.build_prompt(
                    agent, memories, history, text, transcript, today=context.now().astimezone(UTC).date()
                ),
                tools=(*self._tools.specs(), *self._handoff_tools(agent, enabled)),
            )
            step_text: list[str] = []
            finished: StepFinished | None = None
            async with aclosing(self._model.stream(model_request)) as model_events:
                async for event in model_events:
                    if isinstance(event, TextChunk):
                        if not event.text:
                            continue
                        first = progress.time_to_first_token is None
                        if first:
                            progress.time_to_first_token = self._clock() - started
                            TIME_TO_FIRST_TOKEN.labels(agent.id, model).observe(
                                progress.time_to_first_token, exemplar()
                            )
                        step_text.append(event.text)
                        progress.text.append(event.text)
                        yield TextDelta(event.text, agent.id)
                        if first:
                            # The stream sends the first text before more is read: what the model wrote at
                            # once (a whole answer from its cache) would otherwise all be parsed first.
                            await asyncio.sleep(0)
                    else:
                        finished = event
            if finished is None:
                raise AthenaError("the model stream ended without finishing")
            progress.usage += finished.usage
            if not finished.tool_calls:
                await self._store(progress, progress.message())
                progress.stored = True
                yield MessageCompleted(
                    message_id=progress.message_id,
                    agent_id=agent.id,
                    model=model,
                    usage=progress.usage,
                    time_to_first_token=progress.time_to_first_token,
                    content="".join(progress.text),
                )
                return
            transcript.append(prompt.tool_calls_message("".join(step_text), finished.tool_calls))
            for call in finished.tool_calls:
                is_handoff = handoff_target(call.name) is not None
                yield ToolCallStarted(
                    call.id, call.name, call.arguments_json, progress.agent.id, handoff=is_handoff
                )
                context = replace(context, agent_id=progress.agent.id)
                target, outcome = await self._run_tool(context, call, progress.agent, enabled)
                handoff = (
                    Handoff(progress.agent.id, target.id, _reason(call.arguments_json))
                    if target is not None
                    else None
                )
                progress.tool_calls.append(
                    ToolCallRecord(
                        call.id,
                        call.name,
                        call.arguments_json,
                        outcome.result_json,
                        outcome.is_error,
                        handoff=handoff,
                    )
                )
                transcript.append(prompt.tool_result_message(call.id, outcome.result_json))
                yield ToolCallFinished(call.id, call.name, outcome.result_json, outcome.is_error)
                if target is not None and handoff is not None:
                    yield handoff
                    progress.agent = target
                    memories = await self._recall(target, text)
                    yield MemoriesRecalled(tuple(memories))
        raise ResourceExhausted(
            f"the turn needed over {self._max_steps} model steps (tool calls kept coming); it was stopped"
        )

    def _handoff_tools(self, agent: AgentSpec, enabled: frozenset[str]) -> list[ToolSpec]:
        return [
            handoff_tool(other)
            for other in self._catalog
            if other.id != agent.id and other.enabled and other.id in enabled
        ]

    async def _run_tool(
        self, context: ToolContext, call: ModelToolCall, agent: AgentSpec, enabled: frozenset[str]
    ) -> tuple[AgentSpec | None, ToolOutcome]:
        """Runs one call, in a span of its own (`mesh.genai.tool_span`); for a valid handoff, also returns
        the agent taking over."""
        with genai.tool_span(call.name, call.id) as span:
            target, outcome = await self._run_tool_call(context, call, agent, enabled)
            if span is not None:
                genai.tool_finished(span, outcome.is_error, handoff_to=target.id if target else None)
            return target, outcome

    async def _run_tool_call(
        self, context: ToolContext, call: ModelToolCall, agent: AgentSpec, enabled: frozenset[str]
    ) -> tuple[AgentSpec | None, ToolOutcome]:
        target_id = handoff_target(call.name)
        if target_id is None:
            return None, await self._tools.run(call.name, call.arguments_json, context)
        target = self._catalog.get(target_id)
        if target is None or target.id == agent.id or not target.enabled or target.id not in enabled:
            return None, error_outcome(f"agent {target_id!r} is not available for a handoff")
        return target, ToolOutcome(prompt.handoff_result(target))

    async def _store_failed(self, progress: _Progress, reason: str) -> None:
        """Stores the failed turn in a task of its own: a second cancellation may stop us waiting, never
        the write."""
        task = asyncio.create_task(
            self._store(progress, progress.message(reason), detached=True),
            name=f"store-failed-turn-{progress.message_id}",
        )
        self._background.add(task)
        task.add_done_callback(self._background_done)
        with suppress(Exception):
            await asyncio.shield(task)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("storing a failed turn failed", exc_info=error)

    async def wait_background(self) -> None:
        """Waits for pending writes of failed turns and lease renewals (shutdown, tests)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _reason(arguments_json: str) -> str:
    try:
        arguments = json.loads(arguments_json or "{}")
    except ValueError:
        return ""
    reason = arguments.get("reason", "") if isinstance(arguments, dict) else ""
    return str(reason)[:1000]
