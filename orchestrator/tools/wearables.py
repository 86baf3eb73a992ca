"""`wearable_stats`: a summary of the user's wearable samples (steps, heart rate, sleep, ...) over a range.

Providers sit behind `WearableProvider`; `CsvSampleFolder` reads imported samples (`*.csv` files with a
`metric,timestamp,value` header: an Apple Health export converted, or a Fitbit/Google Fit sync). An empty
result is a normal answer: the model says there is no data. Results are cached for five minutes.
"""

from __future__ import annotations

import asyncio
import csv
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from orchestrator.tools.ephemeral import cached
from orchestrator.tools.registry import Tool, ToolContext

log = logging.getLogger(__name__)

NAME = "wearable_stats"
CACHE_NAMESPACE = "wearable_stats"
METRICS = ("steps", "heart_rate", "resting_heart_rate", "sleep_minutes", "active_energy_kcal", "weight_kg")
RANGES = {"today": None, "7d": timedelta(days=7), "30d": timedelta(days=30)}


@dataclass(frozen=True, slots=True)
class Sample:
    metric: str
    timestamp: datetime
    value: float


class WearableProvider(Protocol):
    async def samples(self, user_id: str, metric: str, start: datetime, end: datetime) -> list[Sample]:
        """Samples of `metric` with start <= timestamp < end."""
        ...


class CsvSampleFolder:
    """Every `*.csv` file directly in `folder`, for every user; at most `max_rows` rows read per call."""

    def __init__(self, folder: Path, *, max_files: int = 50, max_rows: int = 200_000) -> None:
        self._folder = folder
        self._max_files = max_files
        self._max_rows = max_rows

    async def samples(self, user_id: str, metric: str, start: datetime, end: datetime) -> list[Sample]:
        return await asyncio.to_thread(self._samples, metric, start, end)

    def _samples(self, metric: str, start: datetime, end: datetime) -> list[Sample]:
        found: list[Sample] = []
        rows = 0
        files = sorted(self._folder.glob("*.csv"))[: self._max_files] if self._folder.is_dir() else []
        for path in files:
            with path.open(newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    rows += 1
                    if rows > self._max_rows:
                        return found
                    if row.get("metric") != metric:
                        continue
                    try:
                        moment = datetime.fromisoformat(row["timestamp"])
                        value = float(row["value"])
                    except (KeyError, TypeError, ValueError):
                        continue
                    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
                    if start <= moment < end:
                        found.append(Sample(metric, moment, value))
        return found


def wearables_tool(provider: WearableProvider) -> Tool:
    async def stats(arguments: dict[str, Any], context: ToolContext) -> Any:
        metric, period = arguments["metric"], arguments["range"]
        now = context.now().astimezone(UTC)
        span = RANGES[period]
        start = now.replace(hour=0, minute=0, second=0, microsecond=0) if span is None else now - span

        async def compute() -> dict[str, Any]:
            values = [sample.value for sample in await provider.samples(context.user_id, metric, start, now)]
            summary: dict[str, Any] = {"metric": metric, "range": period, "samples": len(values)}
            if values:
                summary |= {
                    "total": round(sum(values), 3),
                    "average": round(sum(values) / len(values), 3),
                    "min": min(values),
                    "max": max(values),
                }
            return summary

        # Minute resolution: repeated questions within the TTL share one computation.
        return await cached(context.memory, CACHE_NAMESPACE, f"{metric}/{period}/{now:%Y%m%dT%H%M}", compute)

    return Tool(
        NAME,
        "Summary (count, total, average, min, max) of the user's wearable data for one metric over a range.",
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
