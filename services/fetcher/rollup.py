"""Bars from a batch of ticks in memory, for batches the writer copies in without conflicts."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from services.common.bars import FINEST, LEVELS

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BarKey = tuple[int, str, int]  # (width in seconds, symbol, bucket start in epoch seconds)


class Bar:
    """Open, high, low and close of some ticks, with the times that merging needs."""

    __slots__ = (
        "close",
        "close_ts",
        "high",
        "high_ts",
        "low",
        "low_ts",
        "open",
        "open_ts",
        "ticks",
    )

    def __init__(self, ts: datetime, price: float, ticks: int = 1) -> None:
        self.open = self.high = self.low = self.close = price
        self.open_ts = self.high_ts = self.low_ts = self.close_ts = ts
        self.ticks = ticks

    def add(self, ts: datetime, price: float) -> None:
        """Count one more tick (ticks never share a time)."""
        self.merge(Bar(ts, price))

    def merge(self, other: Bar) -> None:
        """Fold in the bar of other ticks of the same bucket: the SQL upsert's rule, in Python."""
        if other.open_ts < self.open_ts:
            self.open, self.open_ts = other.open, other.open_ts
        if other.close_ts > self.close_ts:
            self.close, self.close_ts = other.close, other.close_ts
        # the earliest time at the high (and at the low) wins a tie
        if other.high > self.high or (other.high == self.high and other.high_ts < self.high_ts):
            self.high, self.high_ts = other.high, other.high_ts
        if other.low < self.low or (other.low == self.low and other.low_ts < self.low_ts):
            self.low, self.low_ts = other.low, other.low_ts
        self.ticks += other.ticks

    def copy(self) -> Bar:
        bar = Bar.__new__(Bar)
        for name in Bar.__slots__:
            setattr(bar, name, getattr(self, name))
        return bar


def rollup(ticks: Iterable[tuple[str, datetime, float]]) -> dict[BarKey, Bar]:
    """Every level's bars of `ticks` (distinct (symbol, time) pairs): finest first, then wider."""
    width = FINEST.seconds
    finest: dict[tuple[str, int], Bar] = {}
    for symbol, ts, price in ticks:
        slot = (symbol, int(ts.timestamp()) // width * width)
        bar = finest.get(slot)
        if bar is None:
            finest[slot] = Bar(ts, price)
        else:
            bar.add(ts, price)
    bars: dict[BarKey, Bar] = {(width, s, b): bar for (s, b), bar in finest.items()}
    for level in LEVELS[1:]:
        size = level.seconds
        for (symbol, start), bar in finest.items():
            key = (size, symbol, start // size * size)
            wide = bars.get(key)
            if wide is None:
                bars[key] = bar.copy()
            else:
                wide.merge(bar)
    return bars


def columns(bars: dict[BarKey, Bar]) -> list[list[object]]:
    """The bars as the twelve column arrays the bar upsert unnests."""
    cols: list[list[object]] = [[] for _ in range(12)]
    for (width, symbol, start), bar in bars.items():
        row = (
            width,
            symbol,
            EPOCH + timedelta(seconds=start),
            bar.open,
            bar.high,
            bar.low,
            bar.close,
            bar.ticks,
            bar.open_ts,
            bar.high_ts,
            bar.low_ts,
            bar.close_ts,
        )
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    return cols


# Where a vendor's minute bar is drawn inside its minute, in seconds from its start: the open
# first, the close last, the high and the low between them. A rising minute is taken to have
# dipped first and a falling one to have peaked first, the order its shape suggests (the vendor
# does not say). Inside the raw retention each placed price is stored as a backfilled tick, and
# the minute bar stored is exactly the bar of those ticks: raw ticks, 10 s bars and every wider
# level tell the same story as the vendor's open, high, low and close.
OPEN_AT, FIRST_AT, SECOND_AT, CLOSE_AT = 0, 20, 40, 59


def placed(open_: float, high: float, low: float, close: float) -> list[tuple[int, float]]:
    """(second of the minute, price) of each tick a vendor bar is drawn with, oldest first."""
    if high == low:
        return [(OPEN_AT, open_)]  # one price all minute
    first, second = (low, high) if close >= open_ else (high, low)
    points = [(OPEN_AT, open_)]
    # An extreme equal to the open or the close is already drawn there.
    if first not in (open_, close):
        points.append((FIRST_AT, first))
    if second not in (open_, close):
        points.append((SECOND_AT, second))
    points.append((CLOSE_AT, close))
    return points
