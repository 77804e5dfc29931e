"""Stocks: list, one, logo, high/low; last price and change; 404 and 422."""

from __future__ import annotations

from datetime import timedelta

import httpx

from tests.utils.api import T0, Market


async def test_lists_every_stock_with_last_price(client: httpx.AsyncClient, market: Market) -> None:
    await market.stocks("AAPL", "NVDA")
    await market.profile("AAPL", "Apple Inc", "https://logo.example/aapl.png")
    await market.week52("AAPL", 250, 150, previous_close=200)
    await market.ticks([("AAPL", T0, 210), ("AAPL", T0 + timedelta(seconds=1), 220)])

    response = await client.get("/api/v1/stocks")

    assert response.status_code == 200
    aapl, nvda = response.json()
    assert aapl["symbol"] == "AAPL" and aapl["name"] == "Apple Inc"
    assert aapl["logo_url"] == "https://logo.example/aapl.png"
    assert (aapl["week52_high"], aapl["week52_low"], aapl["previous_close"]) == (250, 150, 200)
    assert aapl["last_price"] == 220 and aapl["last_ts"].startswith("2026-01-05T15:00:01")
    assert aapl["change"] == 20 and aapl["change_pct"] == 10
    assert aapl["metadata_updated_at"] is not None
    assert nvda == {
        "symbol": "NVDA",
        "name": None,
        "logo_url": None,
        "week52_high": None,
        "week52_low": None,
        "previous_close": None,
        "metadata_updated_at": None,
        "last_price": None,
        "last_ts": None,
        "change": None,
        "change_pct": None,
        "source": None,
        "failover": False,
        "state": "live",
        "progress": None,
        "reason": None,
        "origin": "config",
    }


async def test_change_without_previous_close_is_against_the_new_york_day(
    client: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("GE")
    # 04:30 UTC is still the previous day in New York; 05:30 UTC is 00:30 of the new day.
    day = T0.replace(hour=0, minute=0)
    await market.ticks([("GE", day + timedelta(hours=4, minutes=30), 50)])
    await market.ticks([("GE", day + timedelta(hours=5, minutes=30), 80)])
    await market.ticks([("GE", T0, 100)])

    stock = (await client.get("/api/v1/stocks/GE")).json()

    assert stock["last_price"] == 100
    assert stock["change"] == 20 and stock["change_pct"] == 25


async def test_one_stock_is_case_insensitive(client: httpx.AsyncClient, market: Market) -> None:
    await market.stocks("BRK.B")
    response = await client.get("/api/v1/stocks/brk.b")
    assert response.status_code == 200 and response.json()["symbol"] == "BRK.B"


async def test_unknown_symbol_is_404(client: httpx.AsyncClient, market: Market) -> None:
    await market.stocks("AAPL")
    for path in ("/api/v1/stocks/ZZZZ", "/api/v1/stocks/ZZZZ/logo", "/api/v1/stocks/ZZZZ/highlow"):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert response.json() == {"detail": "unknown symbol 'ZZZZ'"}


async def test_malformed_symbol_is_422_naming_it(client: httpx.AsyncClient) -> None:
    for symbol in ("A$", "TOOLONGSYMBOL1", "1ABC", "A..B", "x" * 40):
        for suffix in ("", "/logo", "/highlow"):
            response = await client.get(f"/api/v1/stocks/{symbol}{suffix}")
            assert response.status_code == 422, symbol
            assert response.json()["detail"].startswith("path parameter 'symbol': ")


async def test_logo_and_highlow_resources(client: httpx.AsyncClient, market: Market) -> None:
    await market.stocks("NFLX")
    assert (await client.get("/api/v1/stocks/NFLX/logo")).json() == {
        "symbol": "NFLX",
        "logo_url": None,
        "updated_at": None,
    }
    await market.profile("NFLX", "Netflix", "https://logo.example/nflx.png")
    await market.week52("NFLX", 700.5, 400.25)

    logo = (await client.get("/api/v1/stocks/NFLX/logo")).json()
    highlow = (await client.get("/api/v1/stocks/NFLX/highlow")).json()

    assert logo["logo_url"] == "https://logo.example/nflx.png" and logo["updated_at"]
    assert (highlow["week52_high"], highlow["week52_low"]) == (700.5, 400.25)
    assert highlow["updated_at"]
