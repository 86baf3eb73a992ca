"""Opaque page tokens for keyset pagination (newest first).

A token is the sort key of the last item of a page, URL-safe base64 of JSON, tagged with what it pages
through so a conversation token is refused by ListMemories. Tokens are not secret (they only hold a
timestamp and an id of the caller's own data) and need no signature: a forged one only moves the cursor.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from mesh.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position after which the next page starts (ordering is `(at, id)` descending)."""

    at: datetime
    id: str


def encode_page_token(kind: str, cursor: Cursor) -> str:
    raw = json.dumps({"k": kind, "t": cursor.at.isoformat(), "i": cursor.id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, kind: str, field_name: str = "page_token") -> Cursor | None:
    """The cursor of `token`; None for an empty token (first page)."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("k") != kind:
            raise ValueError("wrong kind")
        at = datetime.fromisoformat(str(data["t"]))
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        return Cursor(at=at, id=str(uuid.UUID(str(data["i"]))))
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(field_name, "is not a token returned by this method") from None
