"""Checks of public request fields, each failure naming its field. No gRPC here."""

from __future__ import annotations

import re
import uuid

from mesh.errors import InvalidArgument

MAX_TEXT_CHARS = 32_000
MAX_CLIENT_REQUEST_ID = 64
MAX_PAGE_SIZE = 100
_AGENT_ID = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]+$")


def agent_id(value: str, field: str = "agent_id") -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if not _AGENT_ID.match(value):
        raise InvalidArgument(field, "must be an agent id such as 'athena' or 'nutrition'")
    return value


def object_id(value: str, field: str, *, required: bool = True) -> str:
    """A UUID in canonical form, or "" when optional and absent."""
    if not value:
        if required:
            raise InvalidArgument(field, "is required")
        return ""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument(field, "must be a UUID") from None


def message_text(value: str, field: str = "text") -> str:
    if not value.strip():
        raise InvalidArgument(field, "must not be empty")
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidArgument(field, f"must be at most {MAX_TEXT_CHARS} characters (got {len(value)})")
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain NUL characters")
    return value


def client_request_id(value: str, field: str = "client_request_id") -> str:
    if not value:
        return ""
    if len(value) > MAX_CLIENT_REQUEST_ID or not _CLIENT_REQUEST_ID.match(value):
        raise InvalidArgument(
            field, f"must be at most {MAX_CLIENT_REQUEST_ID} characters of letters, digits and . _ : -"
        )
    return value


def page_size(value: int, field: str = "page_size") -> int:
    if value < 0 or value > MAX_PAGE_SIZE:
        raise InvalidArgument(field, f"must be between 0 and {MAX_PAGE_SIZE}")
    return value


def page_token(value: str, field: str = "page_token") -> str:
    if len(value) > 512:
        raise InvalidArgument(field, "is not a token this service issued")
    return value
