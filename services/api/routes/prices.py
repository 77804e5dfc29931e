"""Price history in a columnar shape a chart consumes directly, at a cost flat in window length."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from services.api import history, queries
from services.api.auth import READERS
from services.api.deps import (
    TIME_PATTERN,
    ConnDep,
    HistorySlotDep,
    InvalidParameter,
    MetricsDep,
    SymbolsDep,
    epoch_ms,
    known_symbols,
    parse_time,
)
from services.common.contract import LatestPrice, Prices, Problem

# The errors every history route may answer (prices and bars).
HISTORY_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "Unknown symbol"},
    422: {"model": Problem, "description": "Invalid parameter"},
    429: {"model": Problem, "description": "This client is over one of its limits (Retry-After)"},
    503: {"model": Problem, "description": "Database unavailable or too busy (Retry-After)"},
}
router = APIRouter(
    prefix="/api/v1/prices", tags=["prices"], dependencies=READERS, responses=HISTORY_RESPONSES
)

DEFAULT_WINDOW = timedelta(days=7)
MAX_WINDOW = timedelta(days=3653)
MAX_POINTS = 10_000
TIME_HELP = "ISO 8601 (a time without zone is UTC) or epoch milliseconds."


def time_query(default: str) -> Any:
    """A time parameter: declared in the forms of TIME_PATTERN, read in any TIME_HELP form."""
    declared = {"pattern": TIME_PATTERN}
    return Query(
        max_length=64, description=f"{TIME_HELP} Default: {default}", json_schema_extra=declared
    )


StartParam = Annotated[
    str | None, time_query("end - 7 days. It must be before end, and at most ten years before it.")
]
EndParam = Annotated[str | None, time_query("now.")]


def window(
    start: str | None,
    end: str | None,
    longest: timedelta = MAX_WINDOW,
    longest_text: str = "ten years",
) -> tuple[datetime, datetime]:
    """The requested [start, end]: by default the 7 days up to now, at most `longest`."""
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
    if until - since > longest:
        raise InvalidParameter(
            "query parameter", "start", f"the window from start to end exceeds {longest_text}"
        )
    return since, until


@router.get("", response_model=Prices)
async def get_prices(
    _slot: HistorySlotDep,
    conn: ConnDep,
    metrics: MetricsDep,
    symbols: SymbolsDep,
    start: StartParam = None,
    end: EndParam = None,
    max_points: Annotated[int, Query(ge=1, le=MAX_POINTS, description="Per symbol.")] = 1000,
) -> Prices:
    """History per symbol, oldest first, newest tick last, at most max_points each."""
    since, until = window(start, end)
    wanted = await known_symbols(conn, symbols)
    with metrics.history_seconds.labels("prices").time():
        loaded = await history.load(conn, wanted, since, until, max_points)
    return Prices(
        start=epoch_ms(since),
        end=epoch_ms(until),
        max_points=max_points,
        series=loaded.series(wanted),
    )


@router.get("/latest", response_model=list[LatestPrice])
async def get_latest(conn: ConnDep, symbols: SymbolsDep) -> list[LatestPrice]:
    """The newest tick of each symbol (symbols without ticks are left out)."""
    wanted = await known_symbols(conn, symbols)
    rows = await conn.fetch(queries.LATEST, wanted)
    return [
        LatestPrice(symbol=r["symbol"], ts=r["ts"], price=float(r["price"]), event_id=r["event_id"])
        for r in rows
    ]
