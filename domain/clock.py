"""Time: always timezone-aware UTC, and injectable so tests control "now"."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that only moves when told to; used by tests and by ``--now`` runs."""

    def __init__(self, now: datetime) -> None:
        self._now = as_utc(now)

    def now(self) -> datetime:
        return self._now

    def set(self, now: datetime) -> None:
        self._now = as_utc(now)


def as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC (the service's only zone); aware ones are converted."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def start_of_day(day: date) -> datetime:
    """behaviour [expiry]: a token that expires on a date expires at 00:00 UTC of that date."""
    return datetime.combine(day, time(0, 0), tzinfo=UTC)
