"""A person's health data as one model, whatever it came from: one value per metric and civil day.

Google Health answers daily roll-ups (`integrations.health_google`); an Apple Health export is read into the
same days (`integrations.apple_health`) and kept, sealed, in PostgreSQL. `merge_days` joins the sources: for
a total (steps, sleep, active energy, workouts) the larger of two sources' values for a day is taken — a
phone and a watch count the same steps, and summing them would double them — and for a rate or a
measurement (heart rate, weight) the average of the sources' values.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Protocol

from integrations.provider_api import Problem
from mesh.errors import InvalidArgument


class Metric(StrEnum):
    STEPS = "steps"
    HEART_RATE = "heart_rate"
    RESTING_HEART_RATE = "resting_heart_rate"
    SLEEP_MINUTES = "sleep_minutes"
    """Minutes asleep (any stage; not awake, not merely in bed) in the night that ended that day."""
    ACTIVE_ENERGY_KCAL = "active_energy_kcal"
    WEIGHT_KG = "weight_kg"
    WORKOUT_MINUTES = "workout_minutes"


UNITS: dict[Metric, str] = {
    Metric.STEPS: "count",
    Metric.HEART_RATE: "bpm",
    Metric.RESTING_HEART_RATE: "bpm",
    Metric.SLEEP_MINUTES: "min",
    Metric.ACTIVE_ENERGY_KCAL: "kcal",
    Metric.WEIGHT_KG: "kg",
    Metric.WORKOUT_MINUTES: "min",
}
TOTALS = frozenset({Metric.STEPS, Metric.SLEEP_MINUTES, Metric.ACTIVE_ENERGY_KCAL, Metric.WORKOUT_MINUTES})
"""Metrics whose day value is a sum of the day's samples; the others are averages."""

GOOGLE = "google"
APPLE_HEALTH = "apple_health"


@dataclass(frozen=True, slots=True)
class Day:
    """One metric on one civil day, from one source."""

    day: date
    value: float
    """The day's total (TOTALS) or average."""
    min: float
    max: float
    source: str
    """`GOOGLE` or `APPLE_HEALTH`."""


@dataclass(frozen=True, slots=True)
class HealthAnswer:
    metric: Metric
    days: list[Day]
    """By date, one per day."""
    sources: list[str]
    problems: list[Problem]


def merge_days(metric: Metric, days: Iterable[Day]) -> list[Day]:
    """One `Day` per date from several sources' days, by date (see the module's docstring)."""
    by_date: dict[date, list[Day]] = {}
    for day in days:
        by_date.setdefault(day.day, []).append(day)
    merged: list[Day] = []
    for when in sorted(by_date):
        found: Sequence[Day] = by_date[when]
        if len(found) == 1:
            merged.append(found[0])
        elif metric in TOTALS:
            merged.append(max(found, key=lambda d: (d.value, d.source)))
        else:
            merged.append(
                Day(
                    when,
                    sum(d.value for d in found) / len(found),
                    min(d.min for d in found),
                    max(d.max for d in found),
                    "+".join(sorted({d.source for d in found})),
                )
            )
    return merged


MAX_DAYS = 366


class DaysSource(Protocol):
    async def days(self, user_id: str, metric: Metric, start: date, end: date) -> list[Day]:
        """The user's days of `metric` with start <= day <= end, by day."""
        ...

    async def has_days(self, user_id: str) -> bool:
        """Whether the user has any days stored (an import happened)."""
        ...


class ConnectedDays(Protocol):
    async def days(self, user_id: str, metric: Metric, start: date, end: date) -> HealthAnswer:
        """The user's days of `metric` from a provider they connected, with the problems met."""
        ...


class Health:
    """`wearable_stats`' data: the person's connected Google Health data and their imported Apple Health
    exports, one value per day (`merge_days`)."""

    def __init__(self, stored: DaysSource, google: ConnectedDays | None = None) -> None:
        self._stored = stored
        self._google = google

    async def stats(self, user_id: str, metric: Metric, start: date, end: date) -> HealthAnswer:
        if end < start:
            raise InvalidArgument("end_date", "must not be before start_date")
        if (end - start).days > MAX_DAYS:
            raise InvalidArgument("end_date", f"the range may span at most {MAX_DAYS} days")
        if self._google is None:
            stored = await self._stored.days(user_id, metric, start, end)
            google = HealthAnswer(metric, [], [], [])
        else:
            stored, google = await asyncio.gather(
                self._stored.days(user_id, metric, start, end), self._google.days(user_id, metric, start, end)
            )
        imported = bool(stored) or await self._stored.has_days(user_id)
        sources = list(google.sources) + ([APPLE_HEALTH] if imported else [])
        return HealthAnswer(
            metric, merge_days(metric, [*stored, *google.days]), sources, list(google.problems)
        )
