"""Dependencies and parameter parsing shared by the routes."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from fastapi import Depends, HTTPException, Path, Query, Request, status

from services.api import queries
from services.api.config import ApiSettings
from services.api.feed import Feed, MarketWatch, read_feed
from services.api.limits import SLOT_WAIT, Busy, ClientLimits
from services.api.listener import Broadcaster
from services.api.metrics import ApiMetrics
from services.common.symbols import (
    MAX_SYMBOL_LENGTH,
    SYMBOL_INPUT_PATTERN,
    SYMBOL_RULE,
    InvalidSymbolError,
    is_symbol_input,
    parse_symbols,
)

MAX_SYMBOLS = 50
# The OpenAPI document declares what each parameter accepts: whatever matches is served (a
# well-formed symbol that is not tracked is a 404). The checks below accept a little more than
# the lists and times declared (spaces around a list's symbols, any ISO 8601 form Python reads).
_SYMBOL = SYMBOL_INPUT_PATTERN.removeprefix("^").removesuffix("$")
SYMBOLS_PATTERN = rf"^({_SYMBOL}(,{_SYMBOL}){{0,{MAX_SYMBOLS - 1}}})?$"
_DAY = r"(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])|(0[13-9]|1[0-2])-(29|30)|(0[13578]|1[02])-31"
_CLOCK = r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
_ZONE = r"Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]"
# Epoch milliseconds (13 digits reach 2286), or an ISO 8601 date with an optional time and zone.
TIME_PATTERN = rf"^(-?[0-9]{{1,13}}|[12][0-9]{{3}}-({_DAY})(T{_CLOCK}({_ZONE})?)?)$"


class InvalidParameter(HTTPException):
    """A 422 whose message names the parameter at fault."""

    def __init__(self, where: str, name: str, message: str) -> None:
        super().__init__(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{where} '{name}': {message}")


async def client_address(request: Request) -> str:
    """The key the request's client is counted under by the per-client limits."""
    limits: ClientLimits = request.app.state.limits
    return limits.client(request)


@asynccontextmanager
async def pooled(request: Request, client: str) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection within `client`'s share (else 429); 503 when none frees up in time."""
    limits: ClientLimits = request.app.state.limits
    pool: asyncpg.Pool = request.app.state.pool
    async with limits.connection_share(client):
        try:
            # Past SLOT_WAIT the process is saturated: a quick 503 with Retry-After serves the
            # client better than a queue that only grows.
            conn = await pool.acquire(timeout=SLOT_WAIT)
        except TimeoutError:
            raise Busy("the server is busy, try again shortly") from None
        try:
            yield cast(asyncpg.Connection, conn)  # a proxy with the connection's interface
        finally:
            await pool.release(conn)


ClientDep = Annotated[str, Depends(client_address)]


async def get_conn(request: Request, client: ClientDep) -> AsyncIterator[asyncpg.Connection]:
    """One pooled connection for the duration of a request."""
    async with pooled(request, client) as conn:
        yield conn


ConnDep = Annotated[asyncpg.Connection, Depends(get_conn)]


async def history_slot(request: Request, client: ClientDep) -> AsyncIterator[None]:
    """One history read: the client's rate and share (else 429), then a process slot (else 503)."""
    limits: ClientLimits = request.app.state.limits
    async with limits.history_read(client):
        yield


# Dependencies are coroutines even where they never await: FastAPI runs a plain function in its
# thread pool, a hop that costs more than the function itself.
async def get_pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


async def get_broadcaster(request: Request) -> Broadcaster:
    broadcaster: Broadcaster = request.app.state.broadcaster
    return broadcaster


async def get_metrics(request: Request) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


async def get_watch(request: Request) -> MarketWatch:
    watch: MarketWatch = request.app.state.market_watch
    return watch


async def current_feed(request: Request, conn: ConnDep) -> Feed:
    """The fetcher's feed, or what the settings describe before the fetcher has written one."""
    return await read_feed(conn, request.app.state.configured_feed)


async def get_limits(request: Request) -> ClientLimits:
    limits: ClientLimits = request.app.state.limits
    return limits


async def symbol_path(
    symbol: Annotated[
        str,
        Path(
            min_length=1,
            max_length=MAX_SYMBOL_LENGTH,
            description="A ticker such as AAPL or BRK.B (case-insensitive).",
            json_schema_extra={"pattern": SYMBOL_INPUT_PATTERN},
        ),
    ],
) -> str:
    """The path's symbol, upper-cased: exactly what SYMBOL_INPUT_PATTERN admits is accepted."""
    if not is_symbol_input(symbol):
        message = f"invalid symbol {symbol!r}: expected {SYMBOL_RULE}"
        raise InvalidParameter("path parameter", "symbol", message)
    return symbol.upper()


async def symbols_query(
    symbols: Annotated[
        str | None,
        Query(
            max_length=1000,
            description=f"Comma-separated tickers (at most {MAX_SYMBOLS}, case-insensitive); "
            "every tracked stock if omitted or empty.",
            json_schema_extra={"pattern": SYMBOLS_PATTERN},
        ),
    ] = None,
) -> list[str] | None:
    """The requested symbols, or None for every tracked stock."""
    if symbols is None or not symbols.strip():
        return None
    try:
        parsed = parse_symbols(symbols)
    except InvalidSymbolError as exc:
        raise InvalidParameter("query parameter", "symbols", str(exc)) from exc
    if len(parsed) > MAX_SYMBOLS:
        raise InvalidParameter(
            "query parameter", "symbols", f"{len(parsed)} symbols given, at most {MAX_SYMBOLS}"
        )
    return parsed or None


def epoch_ms(value: datetime) -> int:
    """Epoch milliseconds, floored."""
    return math.floor(value.timestamp() * 1000)


def parse_time(name: str, value: str) -> datetime:
    """ISO 8601 (a naive time is UTC) or integer epoch milliseconds, as a UTC datetime."""
    text = value.strip()
    try:
        if text.lstrip("-").isdigit() and text.isascii():
            return datetime.fromtimestamp(int(text) / 1000, UTC)
        parsed = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        raise InvalidParameter(
            "query parameter",
            name,
            f"{value[:40]!r} is not an ISO 8601 time (e.g. 2026-01-02T15:30:00Z) "
            "or epoch milliseconds",
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        # in UTC now, not later in the database driver: 9999-12-31T10:00-14:00 is past year 9999
        return parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidParameter(
            "query parameter", name, f"{value[:40]!r} is out of range in UTC (years 1 to 9999)"
        ) from None


async def known_symbols(
    conn: asyncpg.Connection | PoolConnectionProxy, symbols: list[str] | None
) -> list[str]:
    """`symbols` if every one is tracked (else 404 naming the others); None means all tracked."""
    if symbols is None:
        return [r["symbol"] for r in await conn.fetch(queries.ALL_SYMBOLS)]
    found = {r["symbol"] for r in await conn.fetch(queries.KNOWN_SYMBOLS, symbols)}
    unknown = [s for s in symbols if s not in found]
    if unknown:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown symbol(s): {', '.join(unknown)}")
    return symbols


PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
LimitsDep = Annotated[ClientLimits, Depends(get_limits)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
BroadcasterDep = Annotated[Broadcaster, Depends(get_broadcaster)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
SymbolDep = Annotated[str, Depends(symbol_path)]
SymbolsDep = Annotated[list[str] | None, Depends(symbols_query)]
HistorySlotDep = Annotated[None, Depends(history_slot)]
WatchDep = Annotated[MarketWatch, Depends(get_watch)]
FeedDep = Annotated[Feed, Depends(current_feed)]
