"""Tracked stocks: metadata, last price and change; logo and 52-week high/low as resources."""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import APIRouter, HTTPException, status

from services.api import queries
from services.api.deps import ConnDep, SymbolDep
from services.api.rows import stock_from_row
from services.common.contract import HighLow, Logo, Problem, Stock

router = APIRouter(
    prefix="/api/v1/stocks",
    tags=["stocks"],
    responses={
        429: {"model": Problem, "description": "Too many requests at once from this client"},
        503: {"model": Problem, "description": "Database unavailable"},
    },
)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "Unknown symbol"},
    422: {"model": Problem, "description": "Malformed symbol"},
}


async def _metadata(conn: asyncpg.Connection, symbol: str) -> asyncpg.Record:
    row = await conn.fetchrow(queries.METADATA, symbol)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown symbol {symbol!r}")
    return row


@router.get("", response_model=list[Stock])
async def list_stocks(conn: ConnDep) -> list[Stock]:
    """Every tracked stock with its last price and change."""
    return [stock_from_row(r) for r in await conn.fetch(queries.STOCKS, None)]


@router.get("/{symbol}", response_model=Stock, responses=NOT_FOUND)
async def get_stock(symbol: SymbolDep, conn: ConnDep) -> Stock:
    """One tracked stock."""
    rows = await conn.fetch(queries.STOCKS, [symbol])
    if not rows:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown symbol {symbol!r}")
    return stock_from_row(rows[0])


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
