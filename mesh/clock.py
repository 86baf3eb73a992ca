"""Time, as every service reads it: one `Clock` passed through constructors, so tests move time instead of
waiting for it (`tests/doubles/clock.py`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time. (Durations of work in progress use `time.monotonic` directly: they are measured,
    never decided by a clock a test may move.)"""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def time(self) -> float:
        """The current time as seconds since the epoch."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def time(self) -> float:
        return time.time()


SYSTEM_CLOCK = SystemClock()
