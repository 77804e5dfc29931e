"""The fetcher's feed as the API sees it, and the market's state by its exchange calendar."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.api import queries
from services.common.contract import Market as MarketBody
from services.common.market import ALWAYS, Market, MarketState, UnknownCalendar

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
SIMULATED = "simulated"
VENDOR_CALENDAR = "XNYS"  # the calendar of a chain with a vendor, unless one is set
# A state is believed this long at most, even when the calendar names no next open or close.
RECHECK = timedelta(hours=1)
# pandas, under exchange-calendars, reads years 1678 to 2261 only; no calendar has sessions
# outside these bounds, so a window is clipped to them (a 24/7 market keeps it whole).
EARLIEST = datetime(1700, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


def default_calendar(chain: tuple[str, ...]) -> str:
    """XNYS when the chain has a vendor, 24/7 for the simulator alone (as the fetcher decides)."""
    return VENDOR_CALENDAR if any(p != SIMULATED for p in chain) else ALWAYS


@dataclass(frozen=True, slots=True)
class Feed:
    """The row of the `feed` table: live providers in order, the one serving, the calendar."""

    chain: tuple[str, ...]
    active: str | None
    history: str | None
    calendar: str
    extended_hours: bool

    @classmethod
    def from_row(cls, row: Any) -> Feed:
        return cls(
            chain=tuple(row["chain"] or ()),
            active=row["active"],
            history=row["history"],
            calendar=row["calendar"],
            extended_hours=row["extended_hours"],
        )

    @classmethod
    def configured(cls, chain: list[str], calendar: str | None, extended_hours: bool) -> Feed:
        """The feed the settings describe: what is served before the fetcher writes its own."""
        providers = tuple(p.lower() for p in chain) or (SIMULATED,)
        return cls(
            chain=providers,
            active=None,
            history=None,
            calendar=calendar or default_calendar(providers),
            extended_hours=extended_hours,
        )

    @property
    def collapse_closed(self) -> bool:
        """Whether charts should hide closed hours: prices of a vendor stand still then."""
        return any(p != SIMULATED for p in self.chain)


async def read_feed(conn: asyncpg.Connection | PoolConnectionProxy, configured: Feed) -> Feed:
    """The fetcher's feed, or the configured one before the fetcher has written it."""
    row = await conn.fetchrow(queries.FEED)
    return configured if row is None else Feed.from_row(row)


@dataclass(frozen=True, slots=True)
class _Known:
    state: MarketState
    since: datetime
    until: datetime  # the next open or close: the state holds in [since, until)


class MarketWatch:
    """Market states and sessions per (calendar, extended hours), computed off the event loop.

    A calendar costs about 100 ms to build and a state a few milliseconds: each calendar is built
    once, and a state is kept until the next open or close, when it changes.
    """

    def __init__(self, clock: Clock = utc_now, fallback: str = ALWAYS) -> None:
        self.clock = clock
        self.fallback = fallback  # the calendar used when the feed names one we do not know
        self._markets: dict[tuple[str, bool], Market] = {}
        self._known: dict[tuple[str, bool], _Known] = {}
        self._warned: set[str] = set()
        # exchange-calendars fills caches lazily: one thread at a time uses it
        self._lock = threading.Lock()

    def _market(self, calendar: str, extended: bool) -> Market:
        key = (calendar, extended)
        market = self._markets.get(key)
        if market is None:
            try:
                market = Market(calendar, extended)
            except UnknownCalendar:
                if calendar not in self._warned:
                    self._warned.add(calendar)
                    log.warning(
                        "the feed names an unknown calendar; using the configured one",
                        extra={"calendar": calendar[:40], "instead": self.fallback},
                    )
                market = self._market(self.fallback, extended)
            self._markets[key] = market
        return market

    def _state(self, calendar: str, extended: bool, at: datetime) -> _Known:
        with self._lock:
            state = self._market(calendar, extended).state(at)
        changes = [t for t in (state.next_open, state.next_close) if t is not None]
        return _Known(state, at, min([*changes, at + RECHECK]))

    async def state(self, feed: Feed) -> tuple[MarketState, datetime]:
        """The market's state now, and until when it holds (the next open or close)."""
        now = self.clock()
        key = (feed.calendar, feed.extended_hours)
        known = self._known.get(key)
        if known is None or not known.since <= now < known.until:
            known = await anyio.to_thread.run_sync(self._state, *key, now)
            self._known[key] = known
        return known.state, known.until

    async def market(self, feed: Feed) -> MarketBody:
        """The body of GET /api/v1/market and the data of a `market` event."""
        return (await self.market_until(feed))[0]

    async def market_until(self, feed: Feed) -> tuple[MarketBody, datetime]:
        """The market now, and until when it holds (the next open or close)."""
        state, until = await self.state(feed)
        return body(feed, state), until

    def _sessions(
        self, calendar: str, extended: bool, start: datetime, end: datetime
    ) -> tuple[Market, list[tuple[datetime, datetime]]]:
        with self._lock:
            market = self._market(calendar, extended)
            if market.always_open:
                return market, market.sessions(start, end)
            return market, market.sessions(max(start, EARLIEST), min(end, LATEST))

    async def sessions(
        self, feed: Feed, start: datetime, end: datetime
    ) -> tuple[Market, list[tuple[datetime, datetime]]]:
        """The market (its calendar, as resolved) and its open intervals in [start, end)."""
        key = (feed.calendar, feed.extended_hours)
        return await anyio.to_thread.run_sync(self._sessions, *key, start, end)


def body(feed: Feed, state: MarketState) -> MarketBody:
    return MarketBody(
        calendar=state.calendar,
        timezone=state.timezone,
        is_open=state.is_open,
        next_open=state.next_open,
        next_close=state.next_close,
        extended_hours=feed.extended_hours,
        collapse_closed=feed.collapse_closed,
    )


def seconds_until(clock: Clock, until: datetime) -> float:
    """Seconds from the clock's now to `until` (0 when it has passed)."""
    return max(0.0, (until - clock()).total_seconds())
