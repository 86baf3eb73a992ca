"""`ScriptedModel`: a `ChatModel` answering from a script, so tests never reach a real model."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass

from orchestrator.model import ChatModel, ModelEvent, ModelRequest, ModelToolCall, StepFinished, TextChunk
from orchestrator.records import Usage


@dataclass(frozen=True, slots=True)
class ScriptedReply:
    """One scripted model answer: text (streamed one word per chunk) and/or tool calls, or an error."""

    text: str = ""
    tool_calls: tuple[ModelToolCall, ...] = ()
    error: Exception | None = None
    """Raised instead of answering, before any chunk."""
    usage: Usage | None = None
    """Defaults to word counts of the prompt and the text."""

    @classmethod
    def call(cls, name: str, arguments_json: str = "{}", call_id: str | None = None) -> ScriptedReply:
        return cls(
            tool_calls=(ModelToolCall(call_id or f"call_{uuid.uuid4().hex[:12]}", name, arguments_json),)
        )


Script = Sequence[ScriptedReply] | Callable[[ModelRequest], ScriptedReply]


class ScriptedModel(ChatModel):
    """A fake model for tests: answers from a list of replies (in order) or a function of the request, and
    records every request it received in `requests`."""

    def __init__(self, script: Script, *, chunk_delay: float = 0.0) -> None:
        self._script = script
        self._chunk_delay = chunk_delay
        self._next = 0
        self.requests: list[ModelRequest] = []

    def _reply(self, request: ModelRequest) -> ScriptedReply:
        if callable(self._script):
            return self._script(request)
        if self._next >= len(self._script):
            raise AssertionError(
                f"the scripted model was called {self._next + 1} times, scripted {len(self._script)}"
            )
        reply = self._script[self._next]
        self._next += 1
        return reply

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        self.requests.append(request)
        reply = self._reply(request)
        if reply.error is not None:
            raise reply.error
        for word in _word_chunks(reply.text):
            if self._chunk_delay:
                await asyncio.sleep(self._chunk_delay)
            yield TextChunk(word)
        prompt_words = sum(len(str(message.get("content") or "").split()) for message in request.messages)
        usage = reply.usage or Usage(prompt_words, len(reply.text.split()))
        yield StepFinished(reply.tool_calls, usage, "tool_calls" if reply.tool_calls else "stop")


def _word_chunks(text: str) -> list[str]:
    """ "a b c" → ["a", " b", " c"]: concatenating the chunks gives the text back."""
    words = text.split(" ")
    return [word if index == 0 else f" {word}" for index, word in enumerate(words)] if text else []
