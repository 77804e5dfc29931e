"""Pure data shaping: API JSON to column data, % change, band geometry, live-tick merging."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.contract import Series, Stock

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
WINDOWS: dict[str, int] = {
    "1h": HOUR_MS,
    "1d": DAY_MS,
    "1w": 7 * DAY_MS,
    "1m": 30 * DAY_MS,
    "1y": 365 * DAY_MS,
}
WINDOW_LABELS: dict[str, str] = {
    "1h": "1 hour",
    "1d": "1 day",
    "1w": "1 week",
    "1m": "1 month",
    "1y": "1 year",
}

# A logo sits this far (as a fraction of the window) inside the left edge, so it is never clipped;
# each further line's logo one step more, so lines that start together (all of them, in % mode)
# do not pile their logos on top of each other.
LOGO_INSET = 0.045
LOGO_STEP = 0.035

# Okabe-Ito, ordered so the hardest-to-see yellow comes last on a white background.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
UP_COLOUR = "#009E73"
DOWN_COLOUR = "#D55E00"

Columns = dict[str, list[Any]]
# The latest-prices table's columns (time: the last tick's, epoch ms; source: its provider).
TABLE_KEYS = (
    "symbol",
    "name",
    "price",
    "change",
    "change_pct",
    "range",
    "time",
    "source",
    "failover",
)


@dataclass(frozen=True, slots=True)
class Point:
    """One drawn point of a line: epoch ms and price."""

    ts: int
    price: float


@dataclass(slots=True)
class Merge:
    """How a batch of live ticks changes a line: move its last point, then append points."""

    replace_last: Point | None = None
    append: list[Point] = field(default_factory=list)


def colour_for(index: int) -> str:
    """The palette colour of the `index`-th stock, cycling when there are more stocks."""
    return PALETTE[index % len(PALETTE)]


def pct_change(prices: Iterable[float], base: float | None) -> list[float]:
    """Fractional change of each price since `base` (NaN when there is no usable base)."""
    if not base:
        return [math.nan for _ in prices]
    return [price / base - 1.0 for price in prices]


def series_columns(series: Series | None) -> Columns:
    """One `/prices` series as a line's columns: ts, price and change since the first point."""
    if series is None:
        return {"ts": [], "price": [], "pct": []}
    ts, price = list(series.ts), list(series.price)  # the line's source grows them in place
    if len(ts) != len(price):
        raise ValueError(f"series {series.symbol!r}: {len(ts)} times but {len(price)} prices")
    base = price[0] if price else None
    return {"ts": ts, "price": price, "pct": pct_change(price, base)}


def bucket_ms(window_ms: int, max_points: int) -> int:
    """Time one drawn point stands for, so a full window holds at most `max_points` points."""
    return max(1, math.ceil(window_ms / max_points))


def rollover_for(window_ms: int, bucket: int, cap: int) -> int:
    """Points a line keeps: one window of buckets (and a spare), never more than `cap`."""
    return max(2, min(cap, math.ceil(window_ms / bucket) + 1))


def merge_ticks(last_ts: int | None, bucket: int, ticks: Sequence[Point]) -> Merge:
    """Fold live ticks into a line: one point per bucket, nothing at or before its last point."""
    merge = Merge()
    last_bucket = None if last_ts is None else last_ts // bucket
    for tick in sorted(ticks, key=lambda t: t.ts):
        if last_ts is not None and tick.ts <= last_ts:
            continue  # older than what is drawn (or a replay): a line never goes back in time
        tick_bucket = tick.ts // bucket
        if tick_bucket == last_bucket:
            if merge.append:
                merge.append[-1] = tick
            else:
                merge.replace_last = tick
        else:
            merge.append.append(tick)
        last_ts, last_bucket = tick.ts, tick_bucket
    return merge


def band_columns(stocks: Sequence[Stock], bases: Mapping[str, float | None]) -> Columns:
    """52-week bands (low to high) of the stocks that have both ends, in price and in %."""
    cols: Columns = {k: [] for k in ("symbol", "low", "high", "low_pct", "high_pct", "colour")}
    for index, stock in enumerate(stocks):
        low, high = stock.week52_low, stock.week52_high
        if low is None or high is None:
            continue
        low, high = min(low, high), max(low, high)
        base = bases.get(stock.symbol)
        cols["symbol"].append(stock.symbol)
        cols["low"].append(low)
        cols["high"].append(high)
        cols["low_pct"].append(low / base - 1.0 if base else math.nan)
        cols["high_pct"].append(high / base - 1.0 if base else math.nan)
        cols["colour"].append(colour_for(index))
    return cols


def logo_index(xs: Sequence[float], width: float, slot: int = 0) -> int | None:
    """The point the `slot`-th line's logo sits on: near its visible start, staggered by slot."""
    if not len(xs):
        return None
    edge = max(xs[0], xs[-1] - width * (1 - LOGO_INSET))
    drawn = min(width, xs[-1] - xs[0])
    return min(len(xs) - 1, bisect_left(xs, edge + slot * LOGO_STEP * drawn))


def logo_anchor(
    ts: Sequence[int], price: Sequence[float], window_ms: int, slot: int = 0
) -> Point | None:
    """Where the `slot`-th line's logo goes (in real time): see `logo_index`."""
    i = logo_index(ts, window_ms, slot)
    return None if i is None else Point(int(ts[i]), float(price[i]))


def logo_columns(
    stocks: Sequence[Stock],
    starts: Mapping[str, Point | None],
    bases: Mapping[str, float | None],
    xs: Mapping[str, float] | None = None,
) -> Columns:
    """Each company's logo at the start of its line (none for empty lines); `xs`: on the axis."""
    cols: Columns = {k: [] for k in ("symbol", "url", "ts", "x", "price", "pct")}
    for stock in stocks:
        start = starts.get(stock.symbol)
        if start is None or not stock.logo_url:
            continue
        base = bases.get(stock.symbol)
        cols["symbol"].append(stock.symbol)
        cols["url"].append(stock.logo_url)
        cols["ts"].append(start.ts)
        cols["x"].append(xs[stock.symbol] if xs and stock.symbol in xs else start.ts)
        cols["price"].append(start.price)
        cols["pct"].append(start.price / base - 1.0 if base else math.nan)
    return cols


def day_change(price: float | None, previous_close: float | None) -> tuple[float, float]:
    """Change and fractional change since the previous close (NaN when either is unknown)."""
    if price is None or not previous_close:
        return math.nan, math.nan
    return price - previous_close, price / previous_close - 1.0


def table_row(stock: Stock, price: float | None = None, ts: int | None = None) -> dict[str, Any]:
    """One row of the latest-prices table; `price` and `ts` override the stock's last tick."""
    last = price if price is not None else stock.last_price
    if ts is None and stock.last_ts is not None:
        ts = int(stock.last_ts.timestamp() * 1000)
    change, change_pct = day_change(last, stock.previous_close)
    low, high = stock.week52_low, stock.week52_high
    return {
        "symbol": stock.symbol,
        "name": stock.name or stock.symbol,
        "price": math.nan if last is None else last,
        "change": change,
        "change_pct": change_pct,
        "range": f"${low:,.2f} – ${high:,.2f}" if low is not None and high is not None else "—",
        "time": math.nan if ts is None else ts,
        "source": stock.source or "",
        "failover": stock.failover,
    }


def table_columns(stocks: Sequence[Stock]) -> Columns:
    """The whole latest-prices table, one row per stock in the given order."""
    rows = [table_row(stock) for stock in stocks]
    return {key: [row[key] for row in rows] for key in TABLE_KEYS}
