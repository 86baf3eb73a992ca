"""The offline model server in-process on a free port, spoken to only through the official `openai` SDK."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import openai
import pytest
import pytest_asyncio
from conftest import offline_model_settings
from openai import AsyncOpenAI

from mesh.collection import THRESHOLDS
from offline_model.server import OfflineModelServer
from offline_model.settings import OfflineModelSettings

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "remember_memory",
            "parameters": {
                "type": "object",
                "properties": {
                    "text": {"type": "string"},
                    "scope": {"type": "string", "enum": ["user", "agent"]},
                },
                "required": ["text", "scope"],
            },
        },
    },
    {"type": "function", "function": {"name": "forget_memory", "parameters": {"type": "object"}}},
]


@pytest_asyncio.fixture(scope="module")
async def server() -> AsyncIterator[OfflineModelServer]:
    # A few milliseconds between chunks: fast, yet slow enough that a client can leave mid-stream.
    model = OfflineModelServer(offline_model_settings(delay_ms=2))
    await model.start()
    yield model
    await model.stop()


@pytest_asyncio.fixture
async def client(server: OfflineModelServer) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=server.base_url, api_key="offline", max_retries=0) as sdk:
        yield sdk


def unique(text: str) -> str:
    """`text` made unique, so per-message state (injected failures) never leaks between tests."""
    return f"{text} {uuid.uuid4().hex}"


async def stream_stats(client: AsyncOpenAI) -> dict[str, int]:
    stats = await client.get("/_stats", cast_to=object)
    assert isinstance(stats, dict)
    return {str(name): int(count) for name, count in stats.items()}


async def test_text_streams_one_word_per_chunk(client: AsyncOpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "You are Athena."},
        {"role": "system", "content": "Memories:\n- Caloric goal is 2000 kcal\n- Allergic to peanuts"},
        {"role": "user", "content": "What do you know about me?"},
    ]
    stream = await client.chat.completions.create(model="athena-offline", messages=messages, stream=True)
    pieces: list[str] = []
    finish_reasons: list[str] = []
    async for chunk in stream:
        assert chunk.model == "athena-offline"
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    expected = "Here is what I know: Caloric goal is 2000 kcal; Allergic to peanuts"
    assert "".join(pieces) == expected
    assert [piece.strip() for piece in pieces] == expected.split()
    assert finish_reasons == ["stop"]


async def test_without_memories_it_says_it_does_not_know(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="my-model", messages=[{"role": "user", "content": "What is my goal?"}]
    )
    assert completion.model == "my-model"
    assert completion.choices[0].message.content == "I don't know that yet."
    assert completion.choices[0].finish_reason == "stop"


async def test_tool_call_deltas_assemble_into_remember_memory(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="athena-offline",
        messages=[{"role": "user", "content": "Remember that I like green tea."}],
        tools=TOOLS,
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish_reason = None
    async for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                if delta.id:
                    assert delta.type == "function"
                    call["id"] = delta.id
                if delta.function and delta.function.name:
                    call["name"] = delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
            finish_reason = choice.finish_reason or finish_reason
    assert finish_reason == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["name"] == "remember_memory"
    assert json.loads(calls[0]["arguments"]) == {"text": "I like green tea", "scope": "user"}


async def test_non_streaming_tool_call_and_text_when_the_tool_is_not_offered(client: AsyncOpenAI) -> None:
    offered = await client.chat.completions.create(
        model="athena-offline", messages=[{"role": "user", "content": "forget my tea"}], tools=TOOLS
    )
    choice = offered.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "forget_memory"
    assert json.loads(call.function.arguments) == {"query": "my tea"}

    not_offered = await client.chat.completions.create(
        model="athena-offline", messages=[{"role": "user", "content": "am I free tomorrow?"}], tools=TOOLS
    )
    assert not_offered.choices[0].finish_reason == "stop"
    assert not_offered.choices[0].message.tool_calls is None
    assert not_offered.choices[0].message.content == "I don't know that yet."


async def test_a_tool_result_is_confirmed(client: AsyncOpenAI) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "remember I like green tea"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {
                        "name": "remember_memory",
                        "arguments": json.dumps({"text": "I like green tea", "scope": "user"}),
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": json.dumps({"id": "m-1"})},
    ]
    stream = await client.chat.completions.create(
        model="athena-offline", messages=messages, tools=TOOLS, stream=True
    )
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert text == "Got it — I'll remember that I like green tea."


async def test_usage_arrives_in_a_final_chunk_without_choices(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="athena-offline",
        messages=[{"role": "user", "content": "tell me something new"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.prompt_tokens == 4
    assert usage.completion_tokens == 5  # "I don't know that yet."
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert all(chunk.usage is None for chunk in chunks[:-1])


async def test_embeddings_float_and_base64_agree(client: AsyncOpenAI) -> None:
    texts = [
        "My daily calorie goal is 2000 kcal",
        "What is my daily calorie goal?",
        "The invoice is due Friday",
    ]
    as_floats = await client.embeddings.create(
        model="athena-offline-embed", input=texts, encoding_format="float"
    )
    # Without encoding_format the SDK asks for base64 and decodes it.
    default = await client.embeddings.create(model="athena-offline-embed", input=texts)
    assert as_floats.model == "athena-offline-embed"
    assert [item.index for item in as_floats.data] == [0, 1, 2]
    assert as_floats.usage.prompt_tokens == sum(len(text.split()) for text in texts)
    floats = np.array([item.embedding for item in as_floats.data])
    decoded = np.array([item.embedding for item in default.data])
    assert floats.shape == (3, 384)
    assert np.allclose(floats, decoded, atol=1e-7)

    statement, related, unrelated = floats
    assert float(statement @ statement) == pytest.approx(1.0, abs=1e-5)
    assert float(statement @ related) > float(statement @ unrelated)


async def test_identical_texts_embed_identically_and_dimensions_are_honoured(client: AsyncOpenAI) -> None:
    first = await client.embeddings.create(model="athena-offline-embed", input="I like green tea")
    second = await client.embeddings.create(
        model="athena-offline-embed", input=["I like green tea"], encoding_format="float"
    )
    a, b = np.array(first.data[0].embedding), np.array(second.data[0].embedding)
    assert float(a @ b) / float(np.linalg.norm(a) * np.linalg.norm(b)) == pytest.approx(1.0, abs=1e-6)
    short = await client.embeddings.create(
        model="athena-offline-embed", input="I like green tea", dimensions=64
    )
    assert len(short.data[0].embedding) == 64


async def test_injected_failure_is_answered_then_the_message_succeeds(client: AsyncOpenAI) -> None:
    message = unique("!fail 503 1 hello")
    with pytest.raises(openai.InternalServerError) as failure:
        await client.chat.completions.create(
            model="athena-offline", messages=[{"role": "user", "content": message}]
        )
    assert failure.value.status_code == 503
    completion = await client.chat.completions.create(
        model="athena-offline", messages=[{"role": "user", "content": message}]
    )
    assert completion.choices[0].message.content == "I don't know that yet."


async def test_directives_are_only_obeyed_when_a_test_setting_enables_them() -> None:
    """Anyone can type "!fail 503 9 …" or "!slow 60000 …": a deployed model must answer it as words."""
    server = OfflineModelServer(OfflineModelSettings(port=0, delay_ms=0, embedding_dimensions=384))
    await server.start()
    try:
        async with AsyncOpenAI(base_url=server.base_url, api_key="offline", max_retries=0) as plain:
            for message in (unique("!fail 503 9 hello"), unique("!slow 60000 hello")):
                completion = await plain.chat.completions.create(
                    model="athena-offline", messages=[{"role": "user", "content": message}], timeout=5
                )
                assert completion.choices[0].message.content == "I don't know that yet."
    finally:
        await server.stop()


async def test_bad_requests_get_openai_errors(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="athena-offline", messages=[])
    assert bad.value.param == "messages"
    assert bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as empty:
        await client.embeddings.create(model="athena-offline-embed", input="")
    assert empty.value.param == "input"


async def test_models_are_listed(client: AsyncOpenAI) -> None:
    models = [model.id async for model in client.models.list()]
    assert models == ["athena-offline", "athena-offline-embed"]


async def test_a_client_leaving_mid_stream_stops_generation(client: AsyncOpenAI) -> None:
    before = await stream_stats(client)
    many = "\n".join(f"- memory number {n}" for n in range(500))
    stream = await client.chat.completions.create(
        model="athena-offline",
        messages=[{"role": "system", "content": f"Memories:\n{many}"}, {"role": "user", "content": "hi"}],
        stream=True,
    )
    first = await anext(aiter(stream))
    assert first.choices[0].delta.content == "Here "
    await stream.close()

    for _ in range(100):
        stats = await stream_stats(client)
        if stats["streams_disconnected"] > before["streams_disconnected"]:
            break
        await asyncio.sleep(0.02)
    assert stats["streams_disconnected"] == before["streams_disconnected"] + 1
    assert stats["streams_completed"] == before["streams_completed"]
    assert stats["streams_started"] == before["streams_started"] + 1


def test_serving_collects_garbage_as_the_services_do() -> None:
    """`serve` sets the services' collection thresholds and freezes what start-up made, so that no full
    collection of its tables stops every stream it serves (the benchmarks' model, mesh and direct alike)."""
    script = """
import asyncio, gc, os, signal
import uvloop
from offline_model import server
from offline_model.settings import OfflineModelSettings

async def main():
    async def stop_once_listening():
        for _ in range(1000):  # frozen once it listens; stopped after 10 s in any case
            if gc.get_freeze_count():
                break
            await asyncio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
    stopper = asyncio.create_task(stop_once_listening())
    await server.serve(OfflineModelSettings(port=0))
    await stopper
    print(gc.get_threshold(), gc.get_freeze_count() > 1000)

uvloop.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split("\n")[0] == f"{THRESHOLDS} True"
