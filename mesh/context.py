"""What the current call is about, available to handlers and to outgoing calls without threading it through.

The server interceptors set these per RPC (each RPC runs in its own task, so values never leak between
calls); `mesh.clients` reads them to forward the caller's token, request id and remaining deadline.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from mesh.errors import DeadlineExceeded, Unauthenticated


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified caller: the subject of a valid access token."""

    user_id: str
    """The token's `sub`."""
    token: str
    """The raw access token, forwarded on internal calls so each service scopes data itself."""
    email: str = ""
    """The token's `email` claim, when present."""


@dataclass(slots=True)
class CallInfo:
    """One incoming RPC as the interceptors see it."""

    method: str
    """Full method name, for example "/athena.chat.v1.ChatService/Chat"."""
    request_id: str
    """Correlates logs across services: taken from `x-request-id` or made up."""
    started: float = field(default_factory=time.perf_counter)
    deadline: float | None = None
    """`time.monotonic()` value by which the caller wants an answer, if it set a deadline."""
    principal: Principal | None = None
    status: str = "OK"
    peer: str = ""
    """The caller's address as gRPC names it ("ipv4:127.0.0.1:52514"), read when the call starts: once a
    call is cancelled, grpc may already have freed what `context.peer()` reads (it crashed the process)."""

    @property
    def service(self) -> str:
        return self.method.rsplit("/", 2)[-2] if self.method.count("/") >= 2 else ""

    @property
    def method_name(self) -> str:
        return self.method.rsplit("/", 1)[-1]


current_call: ContextVar[CallInfo | None] = ContextVar("current_call", default=None)


def principal() -> Principal:
    """The verified caller of the current RPC; UNAUTHENTICATED when the method ran without one."""
    call = current_call.get()
    if call is None or call.principal is None:
        raise Unauthenticated("this call needs an access token")
    return call.principal


def time_remaining() -> float | None:
    """Seconds left until the current call's deadline, None when it has none."""
    call = current_call.get()
    if call is None or call.deadline is None:
        return None
    remaining = call.deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded("the deadline of the call passed")
    return remaining
