"""Market hours for the fetcher's hot paths: a Market's sessions, looked up a week at a time."""

from __future__ import annotations

from datetime import datetime, timedelta

from services.common.market import Market

MARGIN = timedelta(days=1)  # how far either side of a lookup the cached sessions must reach
AHEAD = timedelta(days=7)


class Hours:
    """Whether the market is open at a time, without asking the calendar for every tick."""

    def __init__(self, market: Market) -> None:
        self.market = market
        self._spans: list[tuple[datetime, datetime]] = []
        self._lo: datetime | None = None
        self._hi: datetime | None = None

    def _around(self, at: datetime) -> list[tuple[datetime, datetime]]:
        lo, hi = self._lo, self._hi
        if lo is None or hi is None or not lo <= at - MARGIN < at + MARGIN <= hi:
            self._lo, self._hi = at - 2 * MARGIN, at + AHEAD
            self._spans = self.market.sessions(self._lo, self._hi)
        return self._spans

    def is_open(self, at: datetime) -> bool:
        """Whether `at` falls in a session (extended hours included when the market has them)."""
        if self.market.always_open:
            return True
        return any(opens <= at < closes for opens, closes in self._around(at))

    def in_session(self, ts: datetime) -> bool:
        """Whether a trade at `ts` belongs to a session; the closing print, at the close, does."""
        if self.market.always_open:
            return True
        return any(opens <= ts <= closes for opens, closes in self._around(ts))
