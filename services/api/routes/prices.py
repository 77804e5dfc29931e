"""Price history in a columnar shape a chart consumes directly, downsampled in SQL when large."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Annotated

from fastapi import APIRouter, Query

from services.api import queries
from services.api.deps import ConnDep, InvalidParameter, SymbolsDep, known_symbols, parse_time
from services.api.models import LatestPrice, Prices, Problem, Series

router = APIRouter(
    prefix="/api/v1/prices",
    tags=["prices"],
    responses={
        404: {"model": Problem, "description": "Unknown symbol"},
        422: {"model": Problem, "description": "Invalid parameter"},
        503: {"model": Problem, "description": "Database unavailable"},
    },
)

DEFAULT_WINDOW = timedelta(days=7)
MAX_WINDOW = timedelta(days=366)
MAX_POINTS = 10_000
TIME_HELP = "ISO 8601 (a time without zone is UTC) or epoch milliseconds."


def window(start: str | None, end: str | None) -> tuple[datetime, datetime]:
    """The requested [start, end]: by default the 7 days up to now."""
    until = parse_time("end", end) if end else datetime.now(UTC)
    if start:
        since = parse_time("start", start)
    else:
        try:
            since = until - DEFAULT_WINDOW
        except OverflowError:
            raise InvalidParameter("query parameter", "end", "too early") from None
    if since >= until:
        raise InvalidParameter("query parameter", "start", "must be before end")
    if until - since > MAX_WINDOW:
        raise InvalidParameter(
            "query parameter", "start", "the window from start to end exceeds one year (366 days)"
        )
    return since, until


def epoch_ms(value: datetime | Decimal) -> int:
    """Epoch milliseconds, floored; a Decimal is epoch seconds."""
    if isinstance(value, datetime):
        return math.floor(value.timestamp() * 1000)
    return int((value * 1000).to_integral_value(rounding=ROUND_FLOOR))


def bucket_stride(since: datetime, until: datetime, buckets: int) -> timedelta:
    """The narrowest stride that puts [since, until] into at most `buckets` buckets."""
    span_us = (until - since) // timedelta(microseconds=1)
    return timedelta(microseconds=span_us // buckets + 1)


@router.get("", response_model=Prices)
async def get_prices(
    conn: ConnDep,
    symbols: SymbolsDep,
    start: Annotated[str | None, Query(max_length=64, description=TIME_HELP)] = None,
    end: Annotated[str | None, Query(max_length=64, description=TIME_HELP)] = None,
    max_points: Annotated[int, Query(ge=1, le=MAX_POINTS, description="Per symbol.")] = 1000,
) -> Prices:
    """History per symbol, oldest first, newest tick last, at most max_points each."""
    since, until = window(start, end)
    wanted = await known_symbols(conn, symbols)
    raw = await conn.fetch(queries.RAW_WINDOW, wanted, since, until, max_points + 1)
    by_symbol: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in raw:
        by_symbol[row["symbol"]].append((row["ts_ms"], float(row["price"])))
    too_many = [s for s in wanted if len(by_symbol[s]) > max_points]
    # Up to three points (low, high, last) per bucket keep spikes; one point when fewer fit.
    per_bucket = 3 if max_points >= 3 else 1
    stride = bucket_stride(since, until, max_points // per_bucket)
    if too_many:
        for symbol in too_many:
            by_symbol[symbol] = []
        stride_us = stride // timedelta(microseconds=1)
        buckets = (until - since) // stride + 1
        rows = await conn.fetch(
            queries.DOWNSAMPLED_WINDOW, too_many, since, until, stride_us, buckets
        )
        for row in rows:
            picks = [row["low"], row["high"]] if per_bucket == 3 else []
            picks.append(row["last"][::-1])  # as [price, epoch seconds]; last, so it wins ties
            bucket = {epoch_ms(epoch): float(price) for price, epoch in picks}
            by_symbol[row["symbol"]].extend(sorted(bucket.items()))
    series = []
    for symbol in wanted:
        points = by_symbol[symbol]
        downsampled = symbol in too_many
        series.append(
            Series(
                symbol=symbol,
                ts=[t for t, _ in points],
                price=[p for _, p in points],
                downsampled=downsampled,
                bucket_ms=math.ceil(stride / timedelta(milliseconds=1)) if downsampled else None,
            )
        )
    return Prices(start=epoch_ms(since), end=epoch_ms(until), max_points=max_points, series=series)


@router.get("/latest", response_model=list[LatestPrice])
async def get_latest(conn: ConnDep, symbols: SymbolsDep) -> list[LatestPrice]:
    """The newest tick of each symbol (symbols without ticks are left out)."""
    wanted = await known_symbols(conn, symbols)
    rows = await conn.fetch(queries.LATEST, wanted)
    return [
        LatestPrice(symbol=r["symbol"], ts=r["ts"], price=float(r["price"]), event_id=r["event_id"])
        for r in rows
    ]
