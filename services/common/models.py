"""Domain types passed between a provider, the fetcher and the database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Tick:
    """One price observation at the provider's own time."""

    symbol: str
    ts: datetime
    price: Decimal
    volume: int | None = None
    source: str | None = None  # the provider it came from (stamped by the fetcher)


@dataclass(frozen=True, slots=True)
class Bar:
    """A vendor's 1-minute bar: the open, high, low, close and volume of its trades that minute."""

    symbol: str
    start: datetime  # the minute's start, UTC
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int | None = None
    trades: int | None = None  # trades in the minute, when the vendor says
    source: str | None = None  # the provider it came from (stamped by the fetcher)


@dataclass(frozen=True, slots=True)
class Profile:
    """A company's display metadata."""

    symbol: str
    name: str | None
    logo_url: str | None


@dataclass(frozen=True, slots=True)
class Week52:
    """The 52-week high and low of a stock, with the previous close when known."""

    symbol: str
    high: Decimal
    low: Decimal
    previous_close: Decimal | None = None
