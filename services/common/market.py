"""The market's own hours, from an exchange calendar (`exchange-calendars`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import pandas as pd

ALWAYS = "24/7"
# Extended (pre- and after-market) hours, local time, of the exchanges that have them: US equities
# trade from 04:00 to 20:00 New York time on a session day.
EXTENDED: dict[str, tuple[time, time]] = {
    "XNYS": (time(4), time(20)),
    "XNAS": (time(4), time(20)),
    "XASE": (time(4), time(20)),
    "ARCX": (time(4), time(20)),
    "BATS": (time(4), time(20)),
    "IEPA": (time(4), time(20)),
}
# Looking further than this for the next open or close means the calendar has none (24/7).
HORIZON = timedelta(days=14)


class UnknownCalendar(ValueError):
    """A calendar name `exchange-calendars` does not know."""


@dataclass(frozen=True, slots=True)
class MarketState:
    """Whether the market is open now, and when it next opens and closes (None: never)."""

    calendar: str
    timezone: str
    is_open: bool
    next_open: datetime | None
    next_close: datetime | None


@functools.cache
def calendar_names() -> frozenset[str]:
    """Every name (and alias) `exchange-calendars` knows."""
    return frozenset(xcals.get_calendar_names(include_aliases=True))


def check_calendar(name: str) -> str:
    """`name` if it is a known calendar, else UnknownCalendar naming a few known ones."""
    if name not in calendar_names():
        raise UnknownCalendar(
            f"unknown calendar {name!r}: use 24/7 or an exchange-calendars name"
            " (XNYS, XNAS, XLON, ...)"
        )
    return name


class Market:
    """When prices move: the sessions of one exchange calendar, in UTC."""

    def __init__(self, name: str, extended_hours: bool = False) -> None:
        self.name = check_calendar(name)
        self._cal = xcals.get_calendar(name)
        self.tz = ZoneInfo(str(self._cal.tz))
        self.always_open = name == ALWAYS
        self.extended = EXTENDED.get(self._cal.name) if extended_hours else None

    def sessions(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """The open intervals overlapping [start, end), clipped to it, oldest first."""
        if end <= start:
            return []
        if self.always_open:
            return [(start, end)]
        first, last = self._cal.first_session, self._cal.last_session
        lo = max(pd.Timestamp(start.astimezone(self.tz).date()) - pd.Timedelta(days=1), first)
        hi = min(pd.Timestamp(end.astimezone(self.tz).date()) + pd.Timedelta(days=1), last)
        if lo > hi:
            return []
        schedule = self._cal.schedule.loc[lo:hi]
        spans: list[tuple[datetime, datetime]] = []
        breaks = "break_start" in schedule.columns
        for day, row in schedule.iterrows():
            opens, closes = row["open"].to_pydatetime(), row["close"].to_pydatetime()
            if self.extended is not None:
                local = day.date()
                opens = min(opens, datetime.combine(local, self.extended[0], self.tz))
                closes = max(closes, datetime.combine(local, self.extended[1], self.tz))
                parts = [(opens, closes)]
            elif breaks and not pd.isna(row["break_start"]):
                bs, be = row["break_start"].to_pydatetime(), row["break_end"].to_pydatetime()
                parts = [(opens, bs), (be, closes)]
            else:
                parts = [(opens, closes)]
            for a, b in parts:
                a, b = max(a.astimezone(UTC), start), min(b.astimezone(UTC), end)
                if a < b:
                    spans.append((a, b))
        return spans

    def is_open(self, at: datetime) -> bool:
        """Whether `at` falls in a session (extended hours included when enabled)."""
        if self.always_open:
            return True
        return bool(self.sessions(at, at + timedelta(microseconds=1)))

    def next_open(self, at: datetime) -> datetime | None:
        """The next time the market opens after `at` (None when it never closes)."""
        if self.always_open:
            return None
        for opens, _ in self.sessions(at, at + HORIZON):
            if opens > at:
                return opens
        return None

    def next_close(self, at: datetime) -> datetime | None:
        """The next time the market closes after `at` (None when it never closes)."""
        if self.always_open:
            return None
        spans = self.sessions(at, at + HORIZON)
        for _, closes in spans:
            if closes > at and closes < at + HORIZON:
                return closes
        return None

    def state(self, at: datetime) -> MarketState:
        """The market's state at `at`."""
        return MarketState(
            calendar=self.name,
            timezone=str(self.tz),
            is_open=self.is_open(at),
            next_open=self.next_open(at),
            next_close=self.next_close(at),
        )

    def open_minutes(self, start: datetime, end: datetime) -> list[datetime]:
        """The start of every whole minute in [start, end) during which the market was open."""
        minutes: list[datetime] = []
        for a, b in self.sessions(start, end):
            minute = a.replace(second=0, microsecond=0)
            if minute < a:
                minute += timedelta(minutes=1)
            while minute + timedelta(minutes=1) <= b:
                minutes.append(minute)
                minute += timedelta(minutes=1)
        return minutes
