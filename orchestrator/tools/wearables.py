"""`wearable_stats`: one health metric per day over a range, from the person's own data.

`HealthData` is where the days come from: `ConnectedHealth` (orchestrator/integrations_client.py) asks the
integrations service, which merges the person's connected Google Health data with the Apple Health exports
they imported (one value per day; a total takes the larger source, rates are averaged). The range is in
civil days ending today (UTC). A source that could not answer is reported to the model as
`orchestrator.tools.sources` says; no data at all is a normal answer the model can say. Complete answers
are cached in memory's ephemeral store for five minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, timedelta
from typing import Any, Protocol

from orchestrator.tools.ephemeral import cached
from orchestrator.tools.registry import Tool, ToolContext
from orchestrator.tools.sources import SourceProblem, complete, with_sources

NAME = "wearable_stats"
CACHE_NAMESPACE = "wearable_stats"
METRICS = (
    "steps",
    "heart_rate",
    "resting_heart_rate",
    "sleep_minutes",
    "active_energy_kcal",
    "weight_kg",
    "workout_minutes",
)
TOTALS = frozenset({"steps", "sleep_minutes", "active_energy_kcal", "workout_minutes"})
RANGES = {"today": 0, "yesterday": 1, "7d": 6, "30d": 29, "90d": 89}
"""Days before today the range starts (`yesterday` is that day alone)."""
NO_HEALTH_DATA = (
    "No health data is connected: the person can connect Google (Fitbit, Pixel Watch) or import an Apple "
    "Health export under Connections."
)


@dataclass(frozen=True, slots=True)
class HealthDay:
    day: date
    value: float
    min: float
    max: float
    source: str


@dataclass(frozen=True, slots=True)
class HealthAnswer:
    days: list[HealthDay]
    unit: str
    sources: list[str]
    problems: list[SourceProblem] = field(default_factory=list)


class HealthData(Protocol):
    async def stats(self, metric: str, start: date, end: date) -> HealthAnswer:
        """The caller's days of `metric` from `start` to `end` (inclusive)."""
        ...


def _range(period: str, today: date) -> tuple[date, date]:
    if period == "yesterday":
        return today - timedelta(days=1), today - timedelta(days=1)
    return today - timedelta(days=RANGES[period]), today


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 1)


def summary(metric: str, period: str, start: date, end: date, answer: HealthAnswer) -> dict[str, Any]:
    """What the model reads: every day's value, and over the range the total (for totals) or the
    average, with the lowest and highest day."""
    days = answer.days
    result: dict[str, Any] = {
        "metric": metric,
        "range": period,
        "start_date": start.isoformat(),
        "end_date": end.isoformat(),
        "unit": answer.unit,
        "days": [{"date": d.day.isoformat(), "value": _number(d.value)} for d in days],
        "sources": answer.sources,
    }
    if days:
        values = [d.value for d in days]
        if metric in TOTALS:
            result["total"] = _number(sum(values))
        result["average_per_day"] = _number(sum(values) / len(values))
        result["lowest"] = _number(min(d.min for d in days))
        result["highest"] = _number(max(d.max for d in days))
    return result


def wearables_tool(health: HealthData) -> Tool:
    async def stats(arguments: dict[str, Any], context: ToolContext) -> Any:
        metric, period = arguments["metric"], arguments["range"]
        start, end = _range(period, context.now().astimezone(UTC).date())

        async def compute() -> dict[str, Any]:
            answer = await health.stats(metric, start, end)
            return with_sources(
                summary(metric, period, start, end, answer),
                answer.sources,
                answer.problems,
                kind="source",
                none_connected=NO_HEALTH_DATA,
            )

        key = f"{metric}/{start.isoformat()}/{end.isoformat()}"
        return await cached(context.memory, CACHE_NAMESPACE, key, compute, keep=complete)

    return Tool(
        NAME,
        "The user's health data (from their watch or phone) for one metric, one value per day over a range "
        "ending today: steps, heart rate (average bpm), resting heart rate, minutes asleep (the night that "
        "ended that day), active energy (kcal), weight (kg) or workout minutes.",
        {
            "type": "object",
            "properties": {
                "metric": {"type": "string", "enum": list(METRICS)},
                "range": {"type": "string", "enum": list(RANGES)},
            },
            "required": ["metric", "range"],
            "additionalProperties": False,
        },
        stats,
    )
