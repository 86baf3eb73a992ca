"""Retry policies, built on tenacity, for the few places where trying again is safe.

- `until_reachable`: start-up work that waits for a dependency to come up (migrations while PostgreSQL
  starts, the orchestrator's catalog sync while memory starts), bounded by a deadline.
- `first_item_retrying`: a stream retried only until its first item arrives. Before it, the caller has
  seen nothing, so another attempt (another replica, another model call) is invisible; after it, a
  failure is the caller's to see. The router's Chat and the orchestrator's model calls use it, each with
  its own policy (which errors, how often, within which deadline).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


def log_retry(what: str) -> Callable[[RetryCallState], None]:
    """A tenacity `before_sleep` hook: one WARNING per retry, naming `what` failed and why."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "%s failed; retrying",
            what,
            extra={
                "attempt": state.attempt_number,
                "error": str(error),
                "delay_seconds": round(state.upcoming_sleep, 3),
            },
        )

    return before_sleep


def until_reachable(
    what: str,
    retry_on: tuple[type[BaseException], ...],
    *,
    within: float | None,
    first_delay: float = 0.2,
    max_delay: float = 2.0,
) -> AsyncRetrying:
    """Retries `what` on `retry_on` with exponential backoff and jitter for `within` seconds (None:
    until it works), then raises the last error."""
    return AsyncRetrying(
        retry=retry_if_exception_type(retry_on),
        stop=stop_after_delay(within) if within is not None else stop_never,
        wait=wait_exponential_jitter(multiplier=first_delay, max=max_delay, jitter=first_delay),
        before_sleep=log_retry(what),
        reraise=True,
    )


async def first_item_retrying(
    open_stream: Callable[[], AsyncIterator[T]], policy: AsyncRetrying
) -> AsyncGenerator[T, None]:
    """The items of `open_stream()`, opened again under `policy` while an attempt fails before its first
    item. A failure after the first item, or one `policy` gives up on, propagates as it is."""
    stream: AsyncIterator[T] | None = None
    first: list[T] = []
    async for attempt in policy:
        with attempt:
            stream = open_stream()
            try:
                first.append(await anext(stream))
            except StopAsyncIteration:
                pass  # an empty stream is an answer, not a failure
            except BaseException:
                await _close(stream)
                raise
    if stream is None:
        return
    try:
        for item in first:
            yield item
        async for item in stream:
            yield item
    finally:
        await _close(stream)


async def _close(stream: AsyncIterator[T]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
