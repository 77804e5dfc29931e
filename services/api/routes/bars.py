"""Open/high/low/close bars for candlesticks, straight from the stored levels."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from services.api import queries
from services.api.auth import READERS
from services.api.deps import (
    ConnDep,
    HistorySlotDep,
    InvalidParameter,
    MetricsDep,
    SymbolsDep,
    epoch_ms,
    known_symbols,
)
from services.api.routes.prices import HISTORY_RESPONSES, EndParam, StartParam, window
from services.common.bars import BY_NAME, LEVELS, Level
from services.common.contract import Bars, BarSeries

router = APIRouter(
    prefix="/api/v1/bars", tags=["prices"], dependencies=READERS, responses=HISTORY_RESPONSES
)

MAX_BARS = 2000
Interval = Literal["auto", "10s", "1m", "2m", "5m", "15m", "30m", "1h", "4h", "1d"]


def pick_interval(name: str, span: timedelta, max_bars: int) -> Level:
    """The named level, or for `auto` the finest whose bars over `span` fit `max_bars`."""
    if name != "auto":
        level = BY_NAME[name]
        needed = span // timedelta(seconds=level.seconds) + 1
        if needed > max_bars:
            raise InvalidParameter(
                "query parameter",
                "interval",
                f"{name} bars over this window would be {needed}, more than max_bars ({max_bars})",
            )
        return level
    for level in LEVELS:
        if span // timedelta(seconds=level.seconds) + 1 <= max_bars:
            return level
    return LEVELS[-1]


@router.get("", response_model=Bars)
async def get_bars(
    _slot: HistorySlotDep,
    conn: ConnDep,
    metrics: MetricsDep,
    symbols: SymbolsDep,
    start: StartParam = None,
    end: EndParam = None,
    interval: Annotated[
        Interval,
        Query(
            description="Bar width; `auto` fits max_bars, a named one must fit it over the window."
        ),
    ] = "auto",
    max_bars: Annotated[int, Query(ge=1, le=MAX_BARS, description="Per symbol.")] = 500,
) -> Bars:
    """Bars per symbol, oldest first; each covers a whole bucket, edge ones may reach outside."""
    since, until = window(start, end)
    level = pick_interval(interval, until - since, max_bars)
    wanted = await known_symbols(conn, symbols)
    with metrics.history_seconds.labels("bars").time():
        rows = await conn.fetch(queries.BARS, wanted, level.seconds, since, until)
    columns: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        cols = columns[row["symbol"]]
        for name in ("ts_ms", "open", "high", "low", "close", "ticks"):
            cols[name].append(row[name])
    series = [
        BarSeries(
            symbol=s,
            ts=[int(t) for t in columns[s]["ts_ms"]],
            open=columns[s]["open"],
            high=columns[s]["high"],
            low=columns[s]["low"],
            close=columns[s]["close"],
            ticks=[int(n) for n in columns[s]["ticks"]],
        )
        for s in wanted
    ]
    return Bars(
        start=epoch_ms(since),
        end=epoch_ms(until),
        interval=level.name,
        interval_ms=level.seconds * 1000,
        series=series,
    )
