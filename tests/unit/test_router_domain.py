"""The GDPR export document, without a server."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from router import export


async def test_the_export_is_one_json_document_in_bounded_chunks() -> None:
    sections: dict[str, list[Any]] = {
        "agents": [{"id": "athena", "enabled": True}],
        "conversations": [{"id": str(n), "messages": [{"content": "é" * 500}]} for n in range(40)],
        "memories": [],
    }
    exported_at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    parts = export.document_parts({"user_id": "u1"}, sections, exported_at)
    chunks = [chunk async for chunk in export.chunked(parts, size=4096)]

    assert len(chunks) > 1
    assert all(len(chunk) == 4096 for chunk in chunks[:-1])
    document = json.loads(b"".join(chunks))
    assert document["profile"] == {"user_id": "u1"}
    assert document["exported_at"] == "2026-12-01T09:30:00+00:00"
    assert document["conversations"] == sections["conversations"]
    assert document["memories"] == []
    assert document["processing"]["your_rights"]
