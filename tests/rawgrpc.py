"""A gRPC client that sends exactly the bytes it is given over HTTP/2 (h2): for requests no well-behaved
client would send (an empty body, a truncated frame, a length prefix longer than the body, a body that
never ends), to check that every one of them still gets a status."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events


@dataclass
class RawAnswer:
    """What came back: HTTP status, then the gRPC status and message (from trailers or headers)."""

    http_status: int | None = None
    grpc_status: str | None = None
    grpc_message: str = ""
    data: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


async def raw_call(
    port: int,
    path: str,
    body: bytes,
    *,
    end_stream: bool = True,
    metadata: tuple[tuple[str, str], ...] = (),
    within: float = 10.0,
    host: str = "127.0.0.1",
) -> RawAnswer:
    """Sends `body` as the request of `path` (ending the stream unless `end_stream` is false) and waits up
    to `within` seconds for the call's end; raises TimeoutError when none comes."""
    reader, writer = await asyncio.open_connection(host, port)
    connection = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    stream_id = connection.get_next_available_stream_id()
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", f"{host}:{port}"),
        (":path", path),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *metadata,
    ]
    connection.send_headers(stream_id, headers, end_stream=not body and end_stream)
    if body or not end_stream:
        connection.send_data(stream_id, body, end_stream=end_stream)
    writer.write(connection.data_to_send())
    answer = RawAnswer()
    try:
        async with asyncio.timeout(within):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return answer
                for event in connection.receive_data(chunk):
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        for name, value in event.headers:
                            key = name.decode() if isinstance(name, bytes) else name
                            text = value.decode() if isinstance(value, bytes) else value
                            answer.headers[key] = text
                        answer.http_status = int(answer.headers.get(":status", "0")) or answer.http_status
                        answer.grpc_status = answer.headers.get("grpc-status", answer.grpc_status)
                        message = answer.headers.get("grpc-message")
                        answer.grpc_message = unquote(message) if message else answer.grpc_message
                    elif isinstance(event, h2.events.DataReceived):
                        answer.data += event.data
                        connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        return answer
                writer.write(connection.data_to_send())
    finally:
        writer.close()
        await writer.wait_closed()
