"""The LLM judge of bench/memory_eval through a real OpenAI-compatible server (the offline model on a free
loopback port): one yes/no request per answer, the reply read as LongMemEval reads it, a failed call left
unjudged."""

from __future__ import annotations

from conftest import offline_model_settings
from openai import AsyncOpenAI

from bench.memory_eval.dataset import Question
from bench.memory_eval.generator import generate
from bench.memory_eval.harness import Asked, Lived, judge_all, summarize
from devstack.process import free_port
from offline_model.rules import UNKNOWN_ANSWER
from offline_model.server import OfflineModelServer


def unknown_answers() -> tuple[dict[str, Question], list[Lived]]:
    synthetic = generate(17, 1)
    questions = {q.id: q for i in synthetic.instances for q in i.questions}
    lived = [
        Lived(i.id, asked=[Asked(q.id, q.category, q.question_type, q.agent_id, q.question, q.answer)])
        for i in synthetic.instances
        for q in i.questions
    ]
    for item in lived:
        item.asked[0].answer = UNKNOWN_ANSWER
    return questions, lived


async def test_each_answer_is_judged_once_and_a_failed_call_is_left_unjudged() -> None:
    questions, lived = unknown_answers()
    model = OfflineModelServer(offline_model_settings())
    await model.start()
    try:
        async with AsyncOpenAI(base_url=model.base_url, api_key="offline", max_retries=0) as client:
            await judge_all(lived, questions, "athena-offline", client)
    finally:
        await model.stop()
    # The offline model answers the judge's prompt with "I don't know that yet.": no "yes" in it.
    asked = [a for item in lived for a in item.asked]
    assert [a.judge for a in asked] == [False] * 5
    assert summarize(asked)["judge_accuracy"] == 0.0

    questions, lived = unknown_answers()
    nobody = f"http://127.0.0.1:{free_port()}/v1"
    async with AsyncOpenAI(base_url=nobody, api_key="none", max_retries=0) as unreachable:
        await judge_all(lived, questions, "athena-offline", unreachable)
    asked = [a for item in lived for a in item.asked]
    assert all(a.judge is None for a in asked)
    assert summarize(asked)["judge_accuracy"] is None
