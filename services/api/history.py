"""Price history at a cost that does not grow with the window: raw ticks when they fit, else bars.

A window of W split into B buckets needs a stride of W / B. The bars served come from the coarsest
level not wider than that stride (adjacent levels differ by at most 6x, so at most about 6 bars are
read per bucket), regrouped in SQL into buckets of a whole number of bars. A window older than a
level's retention is served from the finest level still kept for it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.api import queries
from services.common.bars import LEVELS, Keep, Level
from services.common.contract import Series

Conn = asyncpg.Connection | PoolConnectionProxy
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NEVER = datetime.min.replace(tzinfo=UTC)
Point = tuple[int, float]  # (epoch ms, price)


@dataclass(frozen=True, slots=True)
class Horizons:
    """Raw ticks (and 10 s bars) are kept from `raw`, minute bars from `minute`."""

    raw: datetime
    minute: datetime

    @classmethod
    async def read(cls, conn: Conn) -> Horizons:
        rows = {r["parent"]: r["cutoff"] for r in await conn.fetch(queries.HORIZONS)}
        return cls(rows.get("ticks", NEVER), rows.get("bars_1m", NEVER))

    def kept(self, level: Level, since: datetime) -> bool:
        """Whether `level` still has bars at `since`."""
        if level.keep is Keep.RAW:
            return since >= self.raw
        if level.keep is Keep.MINUTE:
            return since >= self.minute
        return True


def pick_level(stride: timedelta, since: datetime, horizons: Horizons) -> Level | None:
    """The coarsest kept level not wider than `stride` (else the finest kept); None: raw ticks."""
    kept = [level for level in LEVELS if horizons.kept(level, since)]
    narrow = [level for level in kept if timedelta(seconds=level.seconds) <= stride]
    if narrow:
        return narrow[-1]
    if since >= horizons.raw:
        return None  # narrower than any bar: raw ticks, downsampled
    return kept[0]


def bucket_width(level: Level, since: datetime, until: datetime, buckets: int) -> int:
    """Seconds per served bucket: whole bars, aligned to the epoch, at most `buckets` of them.

    One bucket cannot always be had: a window around the epoch (or any instant that is a multiple
    of every width tried) meets two however wide they are. Past a width of twice the window, two
    it is; the series is then trimmed to max_points like any other.
    """
    span = (until - since).total_seconds()
    bars = max(1, math.ceil(span / buckets / level.seconds))
    while True:
        width = bars * level.seconds
        first = math.floor((since - EPOCH).total_seconds() / width)
        last = math.floor((until - EPOCH).total_seconds() / width)
        if last - first + 1 <= buckets or width >= 2 * span:
            return width
        bars += 1


@dataclass
class History:
    """One request's plan and result: which symbols were served how."""

    since: datetime
    until: datetime
    max_points: int
    points: dict[str, list[Point]]
    bucket_ms: dict[str, int]  # symbols served downsampled: their bucket width

    def series(self, symbols: list[str]) -> list[Series]:
        return [
            Series(
                symbol=s,
                ts=[t for t, _ in self.points[s]],
                price=[p for _, p in self.points[s]],
                downsampled=s in self.bucket_ms,
                bucket_ms=self.bucket_ms.get(s),
            )
            for s in symbols
        ]


async def load(
    conn: Conn, symbols: list[str], since: datetime, until: datetime, max_points: int
) -> History:
    """At most `max_points` points per symbol, oldest first, the newest tick in the window last."""
    history = History(since, until, max_points, defaultdict(list), {})
    if not symbols:
        return history
    # Up to three points (low, high, last) per bucket keep spikes; one when fewer fit.
    per_bucket = 3 if max_points >= 3 else 1
    buckets = max_points // per_bucket
    horizons = await Horizons.read(conn)
    stride = (until - since) / buckets
    level = pick_level(stride, since, horizons)
    bars: dict[str, asyncpg.Record] = {}
    width = 0
    if level is not None:
        width = bucket_width(level, since, until, buckets)
        rows = await conn.fetch(
            queries.BARS_WINDOW, symbols, level.seconds, since, until, width, per_bucket == 3
        )
        bars = {row["symbol"]: row for row in rows}
    # Raw ticks where they are kept and fit: the bars' tick counts tell, without reading them.
    raw = [
        s
        for s in symbols
        if since >= horizons.raw and (s not in bars or bars[s]["ticks"] <= max_points)
    ]
    if raw:
        found = await conn.fetch(queries.RAW_WINDOW, raw, since, until, max_points + 1)
        for row in found:
            history.points[row["symbol"]].append((row["ts_ms"], row["price"]))
        raw = [s for s in raw if len(history.points[s]) <= max_points]
    dense = [s for s in symbols if s not in raw]
    if not dense:
        return history
    for symbol in dense:
        history.points[symbol] = []
        history.bucket_ms[symbol] = width * 1000
    if level is None:
        await _raw_buckets(conn, history, dense, stride, per_bucket)
    else:
        for symbol in dense:
            served = bars.get(symbol)
            if served is not None and served["ts"] is not None:
                history.points[symbol] = list(zip(served["ts"], served["price"], strict=True))
    await _append_newest(conn, history, dense, horizons)
    for symbol in dense:
        # the newest points win when the buckets could not be made few enough (see bucket_width)
        del history.points[symbol][: -max_points or None]
    return history


async def _raw_buckets(
    conn: Conn, history: History, symbols: list[str], stride: timedelta, per_bucket: int
) -> None:
    """Windows narrower than the finest bars: the low, high and last tick of each bucket."""
    step_us = stride // timedelta(microseconds=1) + 1
    count = (history.until - history.since) // timedelta(microseconds=step_us) + 1
    rows = await conn.fetch(
        queries.DOWNSAMPLED_WINDOW, symbols, history.since, history.until, step_us, count
    )
    for symbol in symbols:
        history.bucket_ms[symbol] = math.ceil(step_us / 1000)
    _add_buckets(history, rows, per_bucket)


def _add_buckets(history: History, rows: list[asyncpg.Record], per_bucket: int) -> None:
    """Each bucket's real ticks: low and high ([price, epoch ms]) and last ([epoch ms, price])."""
    for row in rows:
        picks: list[tuple[float, float]] = []
        if per_bucket == 3 and row["low"] is not None:
            picks.append((row["low"][1], row["low"][0]))
        if per_bucket == 3 and row["high"] is not None:
            high = row["high"]
            picks.append((-high[1], high[0]))  # its time comes negated (see the queries)
        if row["last"] is not None:
            picks.append((row["last"][0], row["last"][1]))  # last: it wins a tie of times
        bucket = {int(ms): float(price) for ms, price in picks}
        history.points[row["symbol"]].extend(sorted(bucket.items()))


async def _append_newest(
    conn: Conn, history: History, symbols: list[str], horizons: Horizons
) -> None:
    """The newest tick at or before the window's end closes each series."""
    rows = await conn.fetch(
        queries.NEWEST_IN_WINDOW,
        symbols,
        history.since,
        history.until,
        history.until >= horizons.raw,
    )
    for row in rows:
        points = history.points[row["symbol"]]
        if row["ts_ms"] is not None and (not points or points[-1][0] < row["ts_ms"]):
            # The last bucket's own last point lay past the window's end: this one replaces it
            # when there is no room for both.
            if len(points) == history.max_points:
                points.pop()
            points.append((row["ts_ms"], row["price"]))
