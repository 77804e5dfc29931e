"""A stand-in history vendor: the same 1-minute bars for a minute every time; its requests kept."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from services.common.market import Market
from services.common.models import Bar
from services.fetcher.providers.base import ProviderError
from services.fetcher.providers.simulated import SimulatedProvider

MINUTE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Asked:
    """One `bars` request as the vendor received it."""

    symbols: tuple[str, ...]
    start: datetime
    end: datetime


def vendor_bar(symbol: str, start: datetime) -> Bar:
    """The vendor's bar of `symbol` at minute `start`: the same every time it is asked for."""
    digest = hashlib.sha256(f"{symbol}{start.isoformat()}".encode()).digest()
    cents = 10_000 + digest[0] * 4
    o = Decimal(cents) / 100
    c = Decimal(cents + digest[1] % 41 - 20) / 100
    h = max(o, c) + Decimal(digest[2] % 9) / 100
    low = min(o, c) - Decimal(digest[3] % 9) / 100
    if digest[4] % 8 == 0:  # now and then a minute of one price
        o = h = low = c
    return Bar(symbol, start, o, h, low, c, volume=digest[5] * 10, trades=digest[6])


class BarVendor(SimulatedProvider):
    """Live quotes from the simulated market, and history from `vendor_bar` for every minute of
    `hours` (None: every minute) but the `holes`; `errors` fail the next requests in turn."""

    has_history = True

    def __init__(
        self,
        hours: Market | None = None,
        holes: Collection[tuple[str, datetime]] = (),
        errors: Sequence[ProviderError] = (),
        name: str = "vendor",
    ) -> None:
        super().__init__(seed=5, step_seconds=0.05)
        self.name = name
        self.hours = hours
        self.holes = set(holes)
        self.errors: deque[ProviderError] = deque(errors)
        self.asked: list[Asked] = []

    async def bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> list[Bar]:
        self.asked.append(Asked(tuple(symbols), start, end))
        if self.errors:
            raise self.errors.popleft()
        if self.hours is None:
            minutes = []
            minute = start
            while minute < end:
                minutes.append(minute)
                minute += MINUTE
        else:
            minutes = self.hours.open_minutes(start, end)
        return [
            vendor_bar(symbol, minute)
            for symbol in symbols
            for minute in minutes
            if (symbol, minute) not in self.holes
        ]

    def minutes_asked(self, symbol: str) -> list[datetime]:
        """Every minute asked for `symbol`, in request order (repeats included)."""
        found = []
        for asked in self.asked:
            if symbol in asked.symbols:
                minute = asked.start
                while minute < asked.end:
                    found.append(minute)
                    minute += MINUTE
        return found
