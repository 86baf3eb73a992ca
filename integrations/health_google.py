"""A person's days from the Google Health API v4 (https://developers.google.com/health/reference/rest/v4), the
successor of the Fitbit Web API and of Google Fit, as `integrations.health` days of source `GOOGLE`.

What each metric reads (data types as https://developers.google.com/health/data-types names them):

- steps, active energy, heart rate and weight: `dataPoints:dailyRollUp` of `steps` (`countSum`, an int64
  sent as a string), `active-energy-burned` (`kcalSum`), `heart-rate` (`beatsPerMinuteAvg`/`Min`/`Max`) and
  `weight` (`weightGramsAvg`: the roll-up gives no minimum or maximum, so a day's weight is its average),
  one window per civil day. A roll-up's range is closed-open and at most 14 days for heart-rate (and
  calories-in-heart-rate-zone, active-minutes, total-calories), 90 for the others: a longer range is split
  into windows asked at once.
- resting heart rate: the `daily-resting-heart-rate` points (one a day, filtered on `date`).
- sleep minutes: the `sleep` sessions whose civil end falls in the range (filter
  `sleep.interval.civil_end_time`), each counted on the civil date it ended: the summary's `minutesAsleep`,
  else the sum of its LIGHT, DEEP, REM and ASLEEP stages, else the whole session.
- workout minutes: the `exercise` sessions by civil start date (filter `exercise.interval.civil_start_time`),
  each its `activeDuration` (pauses excluded), else the whole session.

Lists are followed page by page (`pageToken`, at most `MAX_PAGES` a window). A day's value is the sum of its
records for a total (`integrations.health.TOTALS`, whose `min` and `max` are that sum), else their average
with the smallest and largest. Calls go through `integrations.provider_api` (a current token, one refresh on
refusal, a short throttle waited out); a Google that cannot answer is a `Problem` in the answer.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any

import httpx

from integrations.connections import Connection, Connections
from integrations.health import GOOGLE, TOTALS, Day, HealthAnswer, Metric
from integrations.provider_api import Failed, ProviderApi
from integrations.providers import Capability, Provider
from mesh.errors import InvalidArgument

MAX_DAYS = 366
"""The longest range asked for at once."""
MAX_PAGES = 20
"""Pages followed per window of a list (25 sleep or exercise sessions a page)."""
LIST_WINDOW_DAYS = 90
"""A list's range is asked for in windows of this many days, at once."""
SHORT_ROLLUP_DAYS = 14
LONG_ROLLUP_DAYS = 90
SHORT_ROLLUP_TYPES = frozenset(
    {"heart-rate", "calories-in-heart-rate-zone", "active-minutes", "total-calories"}
)
"""Data types whose daily roll-up spans at most `SHORT_ROLLUP_DAYS` (dailyRollUp's `range`)."""
ASLEEP_STAGES = frozenset({"LIGHT", "DEEP", "REM", "ASLEEP"})
"""Sleep stages that count as asleep (`minutesAsleep`: not AWAKE, not RESTLESS)."""

Sample = tuple[date, float, float, float]
"""A record's civil date, value, minimum and maximum."""


def _number(value: Any) -> float | None:
    """A JSON number, or an int64 sent as a string; None when absent or unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _seconds(duration: Any) -> float | None:
    """A protobuf `Duration` in JSON ("3600s", "90.5s", "-3600s")."""
    match = re.fullmatch(r"(-?\d+(?:\.\d+)?)s", str(duration or ""))
    return float(match.group(1)) if match else None


def _civil(day: date) -> dict[str, Any]:
    """A `CivilDateTime` at the day's start."""
    return {"date": {"year": day.year, "month": day.month, "day": day.day}}


def _date_of(value: Any) -> date | None:
    """The date of a `Date` ({"year", "month", "day"})."""
    try:
        return date(int(value["year"]), int(value["month"]), int(value["day"]))
    except (TypeError, KeyError, ValueError):
        return None


def _moment(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _interval_date(interval: Mapping[str, Any], end: str) -> date | None:
    """The civil date of an `Interval`'s start (`end` "Start") or end ("End"): its `civil…Time` when given,
    else its physical time shifted by its UTC offset."""
    civil = interval.get(f"civil{end}Time")
    if isinstance(civil, Mapping) and (found := _date_of(civil.get("date"))) is not None:
        return found
    moment = _moment(interval.get(f"{end.lower()}Time"))
    offset = _seconds(interval.get(f"{end.lower()}UtcOffset")) or 0.0
    return None if moment is None else (moment + timedelta(seconds=offset)).date()


def _interval_minutes(interval: Mapping[str, Any]) -> float | None:
    start, end = _moment(interval.get("startTime")), _moment(interval.get("endTime"))
    if start is None or end is None or end < start:
        return None
    return (end - start).total_seconds() / 60


def _windows(start: date, end: date, days: int) -> list[tuple[date, date]]:
    """Closed-open windows of at most `days` days covering `start`..`end` (end inclusive)."""
    windows: list[tuple[date, date]] = []
    cursor, stop = start, end + timedelta(days=1)
    while cursor < stop:
        upper = min(cursor + timedelta(days=days), stop)
        windows.append((cursor, upper))
        cursor = upper
    return windows


def _days(metric: Metric, samples: Iterable[Sample], start: date, end: date) -> list[Day]:
    """One `Day` per date of `samples` within `start`..`end`, by date (see the module docstring)."""
    by_date: dict[date, list[Sample]] = {}
    for sample in samples:
        if start <= sample[0] <= end:
            by_date.setdefault(sample[0], []).append(sample)
    days: list[Day] = []
    for when in sorted(by_date):
        found = by_date[when]
        if metric in TOTALS:
            total = sum(s[1] for s in found)
            days.append(Day(when, total, total, total, GOOGLE))
        else:
            days.append(
                Day(
                    when,
                    sum(s[1] for s in found) / len(found),
                    min(s[2] for s in found),
                    max(s[3] for s in found),
                    GOOGLE,
                )
            )
    return days


def _steps(value: Mapping[str, Any]) -> tuple[float, float, float] | None:
    count = _number(value.get("countSum"))
    return None if count is None else (count, count, count)


def _kcal(value: Mapping[str, Any]) -> tuple[float, float, float] | None:
    kcal = _number(value.get("kcalSum"))
    return None if kcal is None else (kcal, kcal, kcal)


def _bpm(value: Mapping[str, Any]) -> tuple[float, float, float] | None:
    average = _number(value.get("beatsPerMinuteAvg"))
    if average is None:
        return None
    low, high = _number(value.get("beatsPerMinuteMin")), _number(value.get("beatsPerMinuteMax"))
    return average, average if low is None else low, average if high is None else high


def _kilograms(value: Mapping[str, Any]) -> tuple[float, float, float] | None:
    grams = _number(value.get("weightGramsAvg"))
    return None if grams is None else (grams / 1000, grams / 1000, grams / 1000)


ROLLUPS: Mapping[
    Metric, tuple[str, str, Callable[[Mapping[str, Any]], tuple[float, float, float] | None]]
] = {
    Metric.STEPS: ("steps", "steps", _steps),
    Metric.ACTIVE_ENERGY_KCAL: ("active-energy-burned", "activeEnergyBurned", _kcal),
    Metric.HEART_RATE: ("heart-rate", "heartRate", _bpm),
    Metric.WEIGHT_KG: ("weight", "weight", _kilograms),
}
"""Metrics read by daily roll-up: data type, the `DailyRollupDataPoint` field, and its day's value."""


def _resting(point: Mapping[str, Any]) -> Sample | None:
    value = point.get("dailyRestingHeartRate") or {}
    day, bpm = _date_of(value.get("date")), _number(value.get("beatsPerMinute"))
    return None if day is None or bpm is None else (day, bpm, bpm, bpm)


def _sleep(point: Mapping[str, Any]) -> Sample | None:
    sleep = point.get("sleep") or {}
    interval = sleep.get("interval") or {}
    day = _interval_date(interval, "End")
    minutes = _number((sleep.get("summary") or {}).get("minutesAsleep"))
    if minutes is None and sleep.get("stages"):
        minutes = sum(
            _interval_minutes(stage) or 0.0 for stage in sleep["stages"] if stage.get("type") in ASLEEP_STAGES
        )
    if minutes is None:
        minutes = _interval_minutes(interval)
    return None if day is None or minutes is None else (day, minutes, minutes, minutes)


def _exercise(point: Mapping[str, Any]) -> Sample | None:
    exercise = point.get("exercise") or {}
    interval = exercise.get("interval") or {}
    day = _interval_date(interval, "Start")
    active = _seconds(exercise.get("activeDuration"))
    minutes = active / 60 if active is not None else _interval_minutes(interval)
    return None if day is None or minutes is None else (day, minutes, minutes, minutes)


LISTS: Mapping[Metric, tuple[str, str, Callable[[Mapping[str, Any]], Sample | None]]] = {
    Metric.RESTING_HEART_RATE: ("daily-resting-heart-rate", "daily_resting_heart_rate.date", _resting),
    Metric.SLEEP_MINUTES: ("sleep", "sleep.interval.civil_end_time", _sleep),
    Metric.WORKOUT_MINUTES: ("exercise", "exercise.interval.civil_start_time", _exercise),
}
"""Metrics read by listing data points: data type, the civil-date filter field, and a point's sample."""


async def _all(calls: Sequence[Awaitable[list[Sample]]]) -> list[Sample]:
    """Every call's samples, asked at once; the first failure is raised once all have ended (so a refused
    token is refreshed once for the whole read, not once per window)."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    samples: list[Sample] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        samples += outcome
    return samples


class GoogleHealth:
    """A person's days of one metric at Google Health."""

    def __init__(
        self,
        connections: Connections,
        http: httpx.AsyncClient,
        *,
        health_url: str = "https://health.googleapis.com/v4",
    ) -> None:
        self._connections = connections
        self._api = ProviderApi(connections, http)
        self._base = f"{health_url.rstrip('/')}/users/me/dataTypes"

    async def days(self, user_id: str, metric: Metric, start: date, end: date) -> HealthAnswer:
        """The person's days of `metric` from `start` to `end` (inclusive), by date; empty without a Google
        connection holding HEALTH."""
        if end < start:
            raise InvalidArgument("end", "must not be before start")
        if (end - start).days + 1 > MAX_DAYS:
            raise InvalidArgument("end", f"the range may span at most {MAX_DAYS} days")
        held = [
            c
            for c in await self._connections.holding(user_id, Capability.HEALTH)
            if c.provider is Provider.GOOGLE
        ]

        async def days_of(_: Connection, token: str) -> list[Day]:
            samples = await (
                self._rolled_up(token, metric, start, end)
                if metric in ROLLUPS
                else self._listed(token, metric, start, end)
            )
            return _days(metric, samples, start, end)

        read = await self._api.read_each(held, days_of)
        days = [day for _, found in read.answers for day in found]
        return HealthAnswer(metric, days, [GOOGLE] if read.answers else [], read.problems)

    async def _rolled_up(self, token: str, metric: Metric, start: date, end: date) -> list[Sample]:
        data_type, field, value_of = ROLLUPS[metric]
        cap = SHORT_ROLLUP_DAYS if data_type in SHORT_ROLLUP_TYPES else LONG_ROLLUP_DAYS

        async def window(first: date, stop: date) -> list[Sample]:
            samples: list[Sample] = []
            body: dict[str, Any] = {
                "range": {"start": _civil(first), "end": _civil(stop)},
                "windowSizeDays": 1,
            }
            for _ in range(MAX_PAGES):
                page = await self._api.get_json(
                    "POST",
                    f"{self._base}/{data_type}/dataPoints:dailyRollUp",
                    token,
                    Provider.GOOGLE,
                    json=body,
                )
                if not isinstance(page, Mapping):
                    raise Failed("Google answered something unreadable")
                for rollup in page.get("rollupDataPoints") or []:
                    day = _date_of((rollup.get("civilStartTime") or {}).get("date"))
                    value = value_of(rollup.get(field) or {})
                    if day is not None and value is not None:
                        samples.append((day, *value))
                # v4 documents no next page for a daily roll-up; one given is followed all the same.
                if not page.get("nextPageToken"):
                    break
                body = {**body, "pageToken": page["nextPageToken"]}
            return samples

        return await _all([window(first, stop) for first, stop in _windows(start, end, cap)])

    async def _listed(self, token: str, metric: Metric, start: date, end: date) -> list[Sample]:
        data_type, field, sample_of = LISTS[metric]

        async def window(first: date, stop: date) -> list[Sample]:
            samples: list[Sample] = []
            params = {"filter": f'{field} >= "{first.isoformat()}" AND {field} < "{stop.isoformat()}"'}
            for _ in range(MAX_PAGES):
                page = await self._api.get_json(
                    "GET", f"{self._base}/{data_type}/dataPoints", token, Provider.GOOGLE, params=params
                )
                if not isinstance(page, Mapping):
                    raise Failed("Google answered something unreadable")
                samples += [s for p in page.get("dataPoints") or [] if (s := sample_of(p)) is not None]
                if not page.get("nextPageToken"):
                    break
                params = {**params, "pageToken": str(page["nextPageToken"])}
            return samples

        return await _all([window(first, stop) for first, stop in _windows(start, end, LIST_WINDOW_DAYS)])
