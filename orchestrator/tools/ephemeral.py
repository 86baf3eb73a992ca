"""Short-lived tool results (calendar free/busy, wearable stats) cached in memory's ephemeral store.

The cache only saves work: when memory cannot read or write it, the tool computes and answers anyway.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mesh.errors import AthenaError
from orchestrator.ports import MemoryGateway

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 300.0
"""Five minutes, as SPEC §3 sets for ephemeral data."""


async def cached(
    memory: MemoryGateway,
    namespace: str,
    key: str,
    compute: Callable[[], Awaitable[Any]],
    *,
    ttl_seconds: float = DEFAULT_TTL_SECONDS,
    keep: Callable[[Any], bool] = lambda _: True,
) -> Any:
    """The cached value of `namespace`/`key`, or `compute()`'s, stored for `ttl_seconds` when `keep` says
    so (an answer missing a source that failed is not worth keeping)."""
    try:
        hit = await memory.get_ephemeral(namespace, key)
    except AthenaError as exc:
        log.warning("ephemeral cache read failed", extra={"namespace": namespace, "error": exc.message})
        hit = None
    if hit is not None:
        try:
            return json.loads(hit)
        except ValueError:
            log.warning("ephemeral cache value is not JSON; recomputing", extra={"namespace": namespace})
    value = await compute()
    if not keep(value):
        return value
    try:
        await memory.put_ephemeral(namespace, key, json.dumps(value, ensure_ascii=False), ttl_seconds)
    except AthenaError as exc:
        log.warning("ephemeral cache write failed", extra={"namespace": namespace, "error": exc.message})
    return value
