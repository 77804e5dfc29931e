"""CSV export: every stored tick (minute bars past retention), a level's bars, as downloads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import httpx

from services.common.models import Tick
from services.common.retention import set_retention
from tests.utils.api import T0, Market

MS = 1000


def iso(value: datetime) -> str:
    return value.isoformat()


def stamp(value: datetime) -> str:
    return (
        value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    )


def ms(value: datetime) -> int:
    return int(value.timestamp() * MS)


async def test_prices_csv_is_every_tick_per_symbol_in_order(
    client: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("AAPL", "NVDA")
    await market.ticks(
        [("AAPL", T0 + timedelta(seconds=i, milliseconds=250), 100 + i) for i in range(3)]
    )
    await market.ticks([("NVDA", T0 + timedelta(seconds=1), 50.5)])
    await market.history([("NVDA", T0, 50.25)])
    await market.ticks([("AAPL", T0 + timedelta(hours=2), 999)])  # outside the window

    answer = await client.get(
        "/api/v1/prices.csv",
        params={"symbols": "NVDA,AAPL", "start": iso(T0), "end": iso(T0 + timedelta(hours=1))},
    )

    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    end = T0 + timedelta(hours=1)
    assert answer.headers["content-disposition"] == (
        f'attachment; filename="stockstreamer-prices-{T0:%Y%m%dT%H%M%SZ}-{end:%Y%m%dT%H%M%SZ}.csv"'
    )
    aapl = [T0 + timedelta(seconds=i, milliseconds=250) for i in range(3)]
    assert answer.text.splitlines() == [
        "symbol,time,ts,price,kind,source",
        f"NVDA,{stamp(T0)},{ms(T0)},50.25,backfilled,",
        f"NVDA,{stamp(T0 + timedelta(seconds=1))},{ms(T0) + 1000},50.5,tick,",
        *(f"AAPL,{stamp(t)},{ms(t)},{100 + i},tick," for i, t in enumerate(aapl)),
    ]


async def test_prices_csv_past_raw_retention_is_minute_bars(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    market = Market(db, keep=None)
    await set_retention(db, timedelta(days=1), timedelta(days=30))
    now = datetime.now(UTC).replace(microsecond=0)
    old = (now - timedelta(days=3)).replace(second=0)
    recent = now - timedelta(hours=1)
    await market.stocks("GE")
    # older than the raw retention: kept as the minute's bar only (its close, the last tick)
    store = await market.store()
    await store.write_live(
        [
            Tick("GE", old + timedelta(seconds=5), Decimal(10)),
            Tick("GE", old + timedelta(seconds=50), Decimal(11)),
        ]
    )
    await market.ticks([("GE", recent, 12)])

    answer = await client.get(
        "/api/v1/prices.csv", params={"symbols": "GE", "start": iso(now - timedelta(days=4))}
    )

    assert answer.status_code == 200
    assert answer.text.splitlines() == [
        "symbol,time,ts,price,kind,source",
        f"GE,{stamp(old)},{ms(old)},11,bar_1m,",
        f"GE,{stamp(recent)},{ms(recent)},12,tick,",
    ]


async def test_bars_csv_is_a_levels_bars(client: httpx.AsyncClient, market: Market) -> None:
    await market.stocks("AAPL")
    prices = [100, 104, 99, 101, 200]  # four in the first minute, one in the next
    times = [T0 + timedelta(seconds=s) for s in (1, 10, 20, 59, 61)]
    await market.ticks([("AAPL", t, p) for t, p in zip(times, prices, strict=True)])

    answer = await client.get(
        "/api/v1/bars.csv",
        params={"symbols": "AAPL", "start": iso(T0), "end": iso(T0 + timedelta(minutes=5))},
    )

    assert answer.status_code == 200
    assert answer.headers["content-disposition"].startswith(
        'attachment; filename="stockstreamer-bars-1m-'
    )
    minute = T0 + timedelta(minutes=1)
    assert answer.text.splitlines() == [
        "symbol,time,ts,open,high,low,close,ticks",
        f"AAPL,{stamp(T0)},{ms(T0)},100,104,99,101,4",
        f"AAPL,{stamp(minute)},{ms(minute)},200,200,200,200,1",
    ]


async def test_a_long_export_arrives_whole_and_in_order(
    client: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("INTC")
    await market.series("INTC", 12_345)  # more than two cursor fetches

    answer = await client.get(
        "/api/v1/prices.csv",
        params={"symbols": "INTC", "start": iso(T0), "end": iso(T0 + timedelta(days=1))},
    )

    lines = answer.text.splitlines()
    assert len(lines) == 1 + 12_345
    stamps = [int(line.split(",")[2]) for line in lines[1:]]
    assert stamps == [ms(T0) + 1000 * i for i in range(12_345)]


async def test_bad_export_requests_are_4xx_naming_the_problem(
    client: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("AAPL")
    cases = [
        ("/api/v1/prices.csv", {"symbols": "ZZZZ"}, 404, "ZZZZ"),
        ("/api/v1/prices.csv", {"start": "yesterday"}, 422, "start"),
        ("/api/v1/prices.csv", {"start": iso(T0), "end": iso(T0 - timedelta(1))}, 422, "start"),
        ("/api/v1/bars.csv", {"interval": "3m"}, 422, "interval"),
        ("/api/v1/bars.csv", {"symbols": "aapl!"}, 422, "symbols"),
    ]
    for path, params, status, named in cases:
        answer = await client.get(path, params=params)
        assert answer.status_code == status, (path, params, answer.text)
        assert named in answer.text, (path, params, answer.text)
