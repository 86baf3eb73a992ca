"""The contracts' field rules, enforced once for every RPC of every service.

Field rules (ids, lengths, ranges, enums) are declared in `proto/` with protovalidate's `buf.validate`
annotations, for example `string text = 3 [(buf.validate.field).string.max_len = 32000];`.
`ValidationInterceptor`, the innermost interceptor of `mesh.server.MeshServer`, checks each request
message against them after authentication (an unauthenticated caller is told UNAUTHENTICATED, not what
is wrong with its request) and before the handler runs, so handlers receive only valid requests.

A request that breaks a rule is refused with `InvalidArgument(path, problem)`: INVALID_ARGUMENT whose
message is, for example, `text: must be at most 32000 characters` or `message.tool_calls[0].name: value
is required`. Only the first rule broken (in field order) is reported. Rules that cannot be compiled or
evaluated are bugs in a contract: they escape as `protovalidate.CompilationError`/`EvaluationError`,
which `ErrorInterceptor` logs and answers with INTERNAL.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import protovalidate
from google.protobuf.message import Message

from mesh.errors import InvalidArgument
from mesh.interceptors import ServerInterceptor, rewrap

if TYPE_CHECKING:
    from protovalidate import FieldPathPb

    from mesh.interceptors import Behaviour, Continuation, Handler


@functools.cache
def shared_validator() -> protovalidate.Validator:
    """The process's one validator; it compiles each message type's rules on first use and keeps them."""
    return protovalidate.Validator()


def check(validator: protovalidate.Validator, message: Message) -> None:
    """Raises `InvalidArgument` naming the first field of `message` that breaks its rules; a message whose
    type has no rules passes at once (under a microsecond).

    The field is named by its dotted path from `message`: `text`, `chat.text`, `tags[2]`,
    `message.tool_calls[0].name`, `labels["colour"]`. A rule on a message as a whole (a message-level
    `cel` rule) names the field it is about by starting its message with it (`"agent_id: is required to
    forget by query"` on ForgetRequest reads `agent_id: ...`, on a nested message `chat.agent_id: ...`);
    one that names no field is reported under the message type, for example `ChatRequest`.

    Raises:
        InvalidArgument: the message breaks a rule.
        protovalidate.CompilationError: a rule of the contract cannot be compiled (a bug).
        protovalidate.EvaluationError: a rule failed while being evaluated (a bug).
    """
    violations = validator.collect_violations(message, fail_fast=True)
    if not violations:
        return
    violation = violations[0].proto
    path = field_path(violation.field)
    problem = violation.message or f"breaks rule {violation.rule_id}"
    named = _NAMED_FIELD.match(problem)
    message_level = violation.rule is None or not violation.rule.elements
    if message_level and named:  # a rule on the whole message that names the field it is about
        field, problem = named.group(1), named.group(2)
        path = f"{path}.{field}" if path else field
    raise InvalidArgument(path or message.DESCRIPTOR.name, problem)


_NAMED_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]\"]*): (.+)$", re.DOTALL)
"""A message-level rule's message that starts with the field it is about: `agent_id: is required ...`."""


def field_path(path: FieldPathPb | None) -> str:
    """A violation's field path written the way the fields are named in the contract, `""` for none."""
    if path is None:
        return ""
    written = ""
    for element in path.elements:
        written += f".{element.field_name}" if written else element.field_name
        subscript = element.subscript
        if subscript is None:
            continue
        key = subscript.value
        if isinstance(key, bool):
            written += "[true]" if key else "[false]"
        elif isinstance(key, str):
            written += f"[{json.dumps(key)}]"
        else:
            written += f"[{key}]"
    return written


class ValidationInterceptor(ServerInterceptor):
    """Checks every unary request (unary and server-streaming RPCs) with `check` before the handler runs.

    Client-streaming and bidirectional methods (only server reflection here) pass unchecked: their
    request is a stream, and no contract of ours has one.
    """

    def __init__(self, validator: protovalidate.Validator) -> None:
        self._validator = validator

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        return rewrap(handler, self._wrap)

    def _wrap(self, behaviour: Behaviour) -> Behaviour:
        validator = self._validator
        if inspect.isasyncgenfunction(behaviour):

            async def streaming(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                check(validator, request)
                async for response in behaviour(request, context):
                    yield response

            return streaming

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            check(validator, request)
            return await behaviour(request, context)

        return unary
