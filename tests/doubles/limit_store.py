"""`InMemoryLimitStore`: the chat `LimitStore` inside one process (the reference behaviour the Redis
store is held to by tests/service/test_limit_store_contract.py)."""

from __future__ import annotations

from orchestrator.limits import Admission


class InMemoryLimitStore:
    """A `LimitStore` inside one process: for tests, and the reference behaviour of the Redis store."""

    def __init__(self) -> None:
        self.turns: dict[tuple[str, int], int] = {}
        self.streams: dict[str, dict[str, float]] = {}

    async def admit(
        self, user_id: str, stream_id: str, now: float, lease_until: float, window: int, window_ttl: float
    ) -> Admission:
        leases = self.streams.setdefault(user_id, {})
        for expired in [stream for stream, until in leases.items() if until <= now]:
            del leases[expired]
        leases[stream_id] = lease_until
        key = (user_id, window)
        self.turns[key] = self.turns.get(key, 0) + 1
        return Admission(open_streams=len(leases), turns=self.turns[key])

    async def refuse(self, user_id: str, stream_id: str, window: int) -> None:
        self.streams.get(user_id, {}).pop(stream_id, None)
        self.turns[(user_id, window)] -= 1

    async def renew_stream(self, user_id: str, stream_id: str, now: float, lease_until: float) -> None:
        self.streams.setdefault(user_id, {})[stream_id] = lease_until

    async def release_stream(self, user_id: str, stream_id: str) -> None:
        self.streams.get(user_id, {}).pop(stream_id, None)
