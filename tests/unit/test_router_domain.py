"""The router's request checks and the GDPR export document, without a server."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from mesh.errors import InvalidArgument
from router import export, validation


@pytest.mark.parametrize(
    ("check", "value", "field"),
    [
        (validation.agent_id, "", "agent_id"),
        (validation.agent_id, "Athena", "agent_id"),
        (validation.agent_id, "a" * 33, "agent_id"),
        (lambda value: validation.object_id(value, "conversation_id"), "", "conversation_id"),
        (lambda value: validation.object_id(value, "memory_id"), "1234", "memory_id"),
        (validation.message_text, " \n\t", "text"),
        (validation.message_text, "x" * 32_001, "text"),
        (validation.message_text, "a\x00", "text"),
        (validation.client_request_id, "x" * 65, "client_request_id"),
        (validation.client_request_id, "a b", "client_request_id"),
        (validation.page_size, -1, "page_size"),
        (validation.page_size, 101, "page_size"),
        (validation.page_token, "t" * 513, "page_token"),
    ],
)
def test_bad_values_are_refused_naming_their_field(check: object, value: object, field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        check(value)  # type: ignore[operator]
    assert refused.value.field == field
    assert refused.value.message.startswith(f"{field}: ")


def test_good_values_pass_normalised() -> None:
    value = uuid.uuid4()
    assert validation.object_id(str(value).upper(), "conversation_id") == str(value)
    assert validation.object_id("", "conversation_id", required=False) == ""
    assert validation.agent_id("nutrition") == "nutrition"
    assert validation.message_text("x" * 32_000) == "x" * 32_000
    assert validation.client_request_id("web:2f1c-7.retry_1") == "web:2f1c-7.retry_1"
    assert (validation.page_size(0), validation.page_size(100)) == (0, 100)


async def test_the_export_is_one_json_document_in_bounded_chunks() -> None:
    sections: dict[str, list[Any]] = {
        "agents": [{"id": "athena", "enabled": True}],
        "conversations": [{"id": str(n), "messages": [{"content": "é" * 500}]} for n in range(40)],
        "memories": [],
    }
    chunks = [
        chunk async for chunk in export.chunked(export.document_parts({"user_id": "u1"}, sections), size=4096)
    ]

    assert len(chunks) > 1
    assert all(len(chunk) == 4096 for chunk in chunks[:-1])
    document = json.loads(b"".join(chunks))
    assert document["profile"] == {"user_id": "u1"}
    assert document["conversations"] == sections["conversations"]
    assert document["memories"] == []
    assert document["processing"]["your_rights"]
