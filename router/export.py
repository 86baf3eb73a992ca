"""The GDPR export document (Art. 15 and 20): what we hold about a person and why, as JSON chunks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

CHUNK_BYTES = 64 * 1024

PROCESSING = {
    "controller": "the operator of this AthenaOS deployment",
    "purposes": [
        "answering your messages with the agents you chose (contract, GDPR Art. 6(1)(b))",
        "remembering facts you asked agents to remember, across agents when you asked for that",
        "keeping you signed in and protecting your account (legitimate interest, Art. 6(1)(f))",
    ],
    "categories": [
        "profile",
        "sign-in identities",
        "sessions",
        "conversations and messages",
        "memories",
        "agent preferences",
        "connections",
        "notifications agents left for you, and your notification settings",
    ],
    "retention": {
        "conversations": "until you delete them or your account",
        "memories": "until you or an agent forgets them, or you delete your account",
        "ephemeral data (calendar free/busy, wearable stats)": "5 minutes",
        "notifications, notification settings and devices subscribed to Web Push": "until you delete "
        "your account (a device's subscription also ends when its push service says it is gone)",
        "sessions": "30 days after last use; revoked on sign-out and account deletion",
    },
    "recipients": [
        "the push service of each device you allowed notifications on (your browser's vendor) receives "
        "each notification end-to-end encrypted for that device",
        "the language-model provider configured by the operator receives the messages of a turn, the "
        "memories recalled for it and tool results, to produce the answer",
    ],
    "your_rights": "access and portability (this export), erasure (DeleteAccount), rectification (forget "
    "a memory and tell the agent the right fact)",
}


def document_parts(
    profile: dict[str, Any], sections: dict[str, list[Any]], exported_at: datetime
) -> Iterator[bytes]:
    """The export as a sequence of byte pieces that concatenate to one JSON object."""
    header = {
        "format": "athenaos-export/v1",
        "exported_at": exported_at.isoformat(),
        "profile": profile,
        "processing": PROCESSING,
    }
    yield json.dumps(header, ensure_ascii=False)[:-1].encode()
    for name, records in sections.items():
        yield f', "{name}": ['.encode()
        for index, record in enumerate(records):
            yield ((", " if index else "") + json.dumps(record, ensure_ascii=False)).encode()
        yield b"]"
    yield b"}"


async def chunked(parts: Iterator[bytes], size: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    """Regroups pieces into chunks of about `size` bytes."""
    buffer = bytearray()
    for part in parts:
        buffer += part
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)
