"""History as CSV files: every stored tick, or one level's bars, streamed in constant memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Query
from starlette.responses import StreamingResponse

from services.api import history, queries
from services.api.auth import READERS
from services.api.deps import (
    ConnDep,
    HistorySlotDep,
    MetricsDep,
    SymbolsDep,
    known_symbols,
)
from services.api.metrics import ApiMetrics
from services.api.routes.prices import HISTORY_RESPONSES, EndParam, StartParam, window
from services.common.bars import BY_NAME

router = APIRouter(prefix="/api/v1", tags=["export"], dependencies=READERS)

FETCH_ROWS = 5000  # rows per cursor fetch: one write to the client each
PRICES_HEADER = "symbol,time,ts,price,kind,source\n"
BARS_HEADER = "symbol,time,ts,open,high,low,close,ticks\n"
BarInterval = Literal["10s", "1m", "2m", "5m", "15m", "30m", "1h", "4h", "1d"]


def _csv_docs(columns: str) -> dict[int | str, dict[str, Any]]:
    return {
        **HISTORY_RESPONSES,
        200: {
            "description": f"A CSV file with a header line: `{columns.strip()}`.",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
    }


def _filename(kind: str, since: datetime, until: datetime) -> str:
    return f"stockstreamer-{kind}-{since:%Y%m%dT%H%M%SZ}-{until:%Y%m%dT%H%M%SZ}.csv"


def _response(body: AsyncIterator[bytes], filename: str) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/csv; charset=utf-8",
        headers={
            "content-disposition": f'attachment; filename="{filename}"',
            "cache-control": "no-store",
        },
    )


async def _lines(
    conn: asyncpg.Connection,
    metrics: ApiMetrics,
    header: str,
    reads: list[tuple[str, tuple[Any, ...]]],
) -> AsyncIterator[bytes]:
    """The header, then each read's lines in order, from one snapshot, a cursor fetch at a time."""
    yield header.encode()
    rows = 0
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            for query, args in reads:
                cursor = await conn.cursor(query, *args)
                while batch := await cursor.fetch(FETCH_ROWS):
                    rows += len(batch)
                    yield ("\n".join([r[0] for r in batch]) + "\n").encode()
    finally:
        metrics.export_rows.inc(rows)


@router.get("/prices.csv", response_class=StreamingResponse, responses=_csv_docs(PRICES_HEADER))
async def export_prices(
    _slot: HistorySlotDep,
    conn: ConnDep,
    metrics: MetricsDep,
    symbols: SymbolsDep,
    start: StartParam = None,
    end: EndParam = None,
) -> StreamingResponse:
    """Every stored tick in the window, per symbol, oldest first; minute bars where ticks are
    past retention (`kind`), as a CSV download."""
    since, until = window(start, end)
    wanted = await known_symbols(conn, symbols)
    horizons = await history.Horizons.read(conn)
    raw_from = max(since, min(horizons.raw, until))
    reads: list[tuple[str, tuple[Any, ...]]] = []
    for symbol in wanted:
        if since < raw_from:
            reads.append((queries.EXPORT_MINUTES, (symbol, since, raw_from)))
        reads.append((queries.EXPORT_TICKS, (symbol, raw_from, until)))
    lines = _lines(conn, metrics, PRICES_HEADER, reads)
    return _response(lines, _filename("prices", since, until))


@router.get("/bars.csv", response_class=StreamingResponse, responses=_csv_docs(BARS_HEADER))
async def export_bars(
    _slot: HistorySlotDep,
    conn: ConnDep,
    metrics: MetricsDep,
    symbols: SymbolsDep,
    start: StartParam = None,
    end: EndParam = None,
    interval: Annotated[BarInterval, Query(description="Bar width.")] = "1m",
) -> StreamingResponse:
    """The stored bars of one level that meet the window, per symbol, oldest first, as a CSV
    download."""
    since, until = window(start, end)
    wanted = await known_symbols(conn, symbols)
    seconds = BY_NAME[interval].seconds
    reads = [(queries.EXPORT_BARS, (s, seconds, since, until)) for s in wanted]
    lines = _lines(conn, metrics, BARS_HEADER, reads)
    return _response(lines, _filename(f"bars-{interval}", since, until))
