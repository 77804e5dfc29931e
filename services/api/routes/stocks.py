"""The watchlist's stocks: metadata, state, last price and change; adding and removing them."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import APIRouter, HTTPException, Response, status

from services.api import queries
from services.api.auth import READERS, WriterDep
from services.api.bodies import SmallBodies
from services.api.deps import ConnDep, MetricsDep, SettingsDep, SymbolDep
from services.api.rows import stock_from_row
from services.common.contract import HighLow, Logo, NewStock, Problem, Stock

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/api/v1/stocks",
    tags=["stocks"],
    dependencies=READERS,
    route_class=SmallBodies,
    responses={
        429: {"model": Problem, "description": "Too many requests at once from this client"},
        503: {"model": Problem, "description": "Database unavailable"},
    },
)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "Unknown symbol"},
    422: {"model": Problem, "description": "Malformed symbol"},
}
# What every write may answer besides its own.
WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not UTF-8 JSON"},
    401: {"model": Problem, "description": "No token, or a wrong one (WWW-Authenticate)"},
    403: {"model": Problem, "description": "Writes are disabled: no token is configured"},
    413: {"model": Problem, "description": "Body larger than 4 KiB"},
    422: {"model": Problem, "description": "Invalid body or parameter, naming the field"},
}


async def _metadata(conn: asyncpg.Connection, symbol: str) -> asyncpg.Record:
    row = await conn.fetchrow(queries.METADATA, symbol)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown symbol {symbol!r}")
    return row


@router.get("", response_model=list[Stock])
async def list_stocks(conn: ConnDep) -> list[Stock]:
    """Every stock of the watchlist with its state, last price and change."""
    return [stock_from_row(r) for r in await conn.fetch(queries.STOCKS, None)]


@router.post(
    "",
    response_model=Stock,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        **WRITE_RESPONSES,
        202: {"description": "Added (or already there): its state, and its URL in Location"},
        409: {"model": Problem, "description": "The watchlist holds its most symbols"},
    },
)
async def add_stock(
    _writer: WriterDep,
    new: NewStock,
    response: Response,
    conn: ConnDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> Stock:
    """Track a symbol: the fetcher validates it, backfills its history and streams it."""
    symbol = new.symbol.upper()
    change = None
    async with conn.transaction():
        await conn.execute(queries.LOCK_WATCHLIST)
        row = await conn.fetchrow(queries.WATCHED, symbol)
        if row is None or row["state"] == "rejected":  # one more counts against the limit
            if await conn.fetchval(queries.COUNT_WATCHED, symbol) >= settings.max_symbols:
                raise HTTPException(
                    status.HTTP_409_CONFLICT,
                    f"body field 'symbol': at most {settings.max_symbols} symbols are tracked "
                    "(STOCKSTREAMER_MAX_SYMBOLS); remove one first",
                )
            change = "added" if row is None else "retried"
            await conn.execute(
                queries.ADD_WATCHED if row is None else queries.RETRY_WATCHED, symbol
            )
            await conn.execute(queries.NOTIFY, "watchlist", symbol)
        (stock,) = await conn.fetch(queries.STOCKS, [symbol])
    if change is not None:
        metrics.watchlist_changes.labels(change).inc()
        log.info("watchlist changed", extra={"symbol": symbol, "change": change})
    response.headers["Location"] = f"{router.prefix}/{symbol}"
    return stock_from_row(stock)


@router.get("/{symbol}", response_model=Stock, responses=NOT_FOUND)
async def get_stock(symbol: SymbolDep, conn: ConnDep) -> Stock:
    """One stock of the watchlist."""
    rows = await conn.fetch(queries.STOCKS, [symbol])
    if not rows:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown symbol {symbol!r}")
    return stock_from_row(rows[0])


@router.delete(
    "/{symbol}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **WRITE_RESPONSES,
        **NOT_FOUND,
        409: {"model": Problem, "description": "Tracked by configuration (STOCKSTREAMER_SYMBOLS)"},
    },
)
async def remove_stock(
    _writer: WriterDep, symbol: SymbolDep, conn: ConnDep, metrics: MetricsDep
) -> None:
    """Stop tracking a symbol added here; its data stays until retention drops it."""
    async with conn.transaction():
        await conn.execute(queries.LOCK_WATCHLIST)
        row = await conn.fetchrow(queries.WATCHED, symbol)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown symbol {symbol!r}")
        if row["origin"] == "config":
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"path parameter 'symbol': {symbol} is tracked by configuration: remove it "
                "from STOCKSTREAMER_SYMBOLS (and restart the fetcher) instead",
            )
        await conn.execute(queries.REMOVE_WATCHED, symbol)
        await conn.execute(queries.NOTIFY, "watchlist", symbol)
    metrics.watchlist_changes.labels("removed").inc()
    log.info("watchlist changed", extra={"symbol": symbol, "change": "removed"})


@router.get("/{symbol}/logo", response_model=Logo, responses=NOT_FOUND)
async def get_logo(symbol: SymbolDep, conn: ConnDep) -> Logo:
    """A stock's logo URL and when it was last updated."""
    row = await _metadata(conn, symbol)
    return Logo(symbol=symbol, logo_url=row["logo_url"], updated_at=row["updated_at"])


@router.get("/{symbol}/highlow", response_model=HighLow, responses=NOT_FOUND)
async def get_highlow(symbol: SymbolDep, conn: ConnDep) -> HighLow:
    """A stock's 52-week high and low and when they were last updated."""
    row = await _metadata(conn, symbol)
    high, low = row["week52_high"], row["week52_low"]
    return HighLow(
        symbol=symbol,
        week52_high=None if high is None else float(high),
        week52_low=None if low is None else float(low),
        updated_at=row["updated_at"],
    )
