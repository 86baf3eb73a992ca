"""A minimal gRPC-web client (the browser's protocol) for tests: HTTP/1.1 POST, length-prefixed frames,
trailers in a final frame flagged 0x80."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


@dataclass
class GrpcWebResult:
    http_status: int
    headers: httpx.Headers
    messages: list[bytes] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)

    @property
    def grpc_status(self) -> int:
        return int(self.trailers.get("grpc-status", self.headers.get("grpc-status", "-1")))

    @property
    def grpc_message(self) -> str:
        return self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))

    def decode(self, message_type: type[M]) -> list[M]:
        return [message_type.FromString(raw) for raw in self.messages]


def frame(message: Message) -> bytes:
    payload = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(payload)) + payload


async def _frames(stream: AsyncIterator[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while len(buffer) >= 5:
            flag, length = buffer[0], struct.unpack(">I", buffer[1:5])[0]
            if len(buffer) < 5 + length:
                break
            yield flag, buffer[5 : 5 + length]
            buffer = buffer[5 + length :]


async def call(
    client: httpx.AsyncClient,
    base_url: str,
    method: str,
    request: Message | bytes,
    *,
    token: str | None = None,
    origin: str | None = None,
    http_timeout: float = 30.0,
) -> GrpcWebResult:
    """Calls `method` ("/pkg.Service/Method") and collects every message; frames arrive as they stream.
    `request` as bytes is sent as the body exactly (malformed requests)."""
    headers = {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "accept": "application/grpc-web",
    }
    if token:
        headers["authorization"] = f"Bearer {token}"
    if origin:
        headers["origin"] = origin
    async with client.stream(
        "POST",
        base_url + method,
        content=request if isinstance(request, bytes) else frame(request),
        headers=headers,
        timeout=http_timeout,
    ) as response:
        result = GrpcWebResult(response.status_code, response.headers)
        async for flag, payload in _frames(response.aiter_bytes()):
            if flag & 0x80:
                for line in payload.decode().split("\r\n"):
                    if ":" in line:
                        key, value = line.split(":", 1)
                        result.trailers[key.strip().lower()] = value.strip()
            else:
                result.messages.append(payload)
    return result
