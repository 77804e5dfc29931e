"""Twelve Data over real HTTP (a fake on a loopback port) into the real database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.fetcher.providers.twelvedata import (
    BARS_SPAN,
    MAX_POINTS,
    TwelveDataProvider,
)
from services.fetcher.service import Fetcher
from tests.fakes.server import Fault, fixture
from tests.fakes.twelvedata import FakeTwelveData
from tests.utils.vendors import one_round, opened, sample, twelvedata_settings


@pytest.fixture
async def fetcher(database_url: str, twelvedata: FakeTwelveData) -> AsyncIterator[Fetcher]:
    async with opened(
        twelvedata_settings(database_url, twelvedata, symbols="AAPL,GE,ZZZZ")
    ) as fetcher:
        yield fetcher


async def test_batched_quotes_logos_and_ranges_reach_the_database(
    fetcher: Fetcher, twelvedata: FakeTwelveData, db: asyncpg.Connection
) -> None:
    await one_round(fetcher)
    assert await fetcher.refresh_metadata_once() is True
    [quote_call] = twelvedata.http.calls("/quote")  # one call for all symbols, names reused
    assert quote_call.params["symbol"] == "AAPL,GE,ZZZZ"
    assert quote_call.headers["authorization"] == f"apikey {twelvedata.key}"
    assert "apikey" not in quote_call.params
    rows = await db.fetch("SELECT symbol FROM ticks ORDER BY symbol")
    assert [r["symbol"] for r in rows] == ["AAPL", "GE"]  # ZZZZ is unknown to the vendor
    assert sample(fetcher, "provider_dropped_total", kind="unknown_symbol") >= 1
    stocks = {r["symbol"]: r for r in await db.fetch("SELECT * FROM stocks")}
    assert stocks["AAPL"]["name"] == "AAPL Inc"
    assert stocks["AAPL"]["logo_url"] == "https://api.twelvedata.com/logo/AAPL.com"
    assert stocks["GE"]["logo_url"].startswith("data:image/svg+xml;base64,")  # no vendor logo
    week = fixture("twelvedata/quote.json")["fifty_two_week"]
    assert str(stocks["AAPL"]["week52_high"]) == week["high"]
    assert str(stocks["AAPL"]["week52_low"]) == week["low"]
    assert (
        str(stocks["AAPL"]["previous_close"]) == fixture("twelvedata/quote.json")["previous_close"]
    )
    assert stocks["ZZZZ"]["name"] is None


async def test_the_same_bar_twice_writes_nothing_new(
    fetcher: Fetcher, db: asyncpg.Connection
) -> None:
    await one_round(fetcher)
    await one_round(fetcher)  # same minute: same bar
    assert await db.fetchval("SELECT count(*) FROM ticks") == 2


async def test_out_of_credits_with_http_200_is_a_rate_limit(
    fetcher: Fetcher, twelvedata: FakeTwelveData, db: asyncpg.Connection
) -> None:
    out = Fault.json(fixture("twelvedata/error_credits.json"))
    twelvedata.http.script("/quote", out, out, out)
    await one_round(fetcher)
    assert sample(fetcher, "provider_errors_total", kind="rate_limited") == 3
    assert await db.fetchval("SELECT count(*) FROM ticks") == 0


async def test_429_with_an_http_date_is_honoured(
    fetcher: Fetcher, twelvedata: FakeTwelveData, db: asyncpg.Connection
) -> None:
    from email.utils import formatdate
    from time import time

    twelvedata.http.script(
        "/quote", Fault(429, "", headers={"Retry-After": formatdate(time() + 2, usegmt=True)})
    )
    await one_round(fetcher)
    first, second = twelvedata.http.calls("/quote")
    assert second.at - first.at >= 0.9  # an HTTP date has one-second resolution
    assert await db.fetchval("SELECT count(*) FROM ticks") == 2


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({**fixture("twelvedata/quote.json"), "close": "N/A"}, "invalid_fields"),
        ({**fixture("twelvedata/quote.json"), "timestamp": None}, "invalid_fields"),
        ({"symbol": "AAPL"}, "invalid_fields"),
    ],
)
async def test_bad_items_in_a_batch_are_dropped_alone(
    fetcher: Fetcher, twelvedata: FakeTwelveData, db: asyncpg.Connection, body: object, kind: str
) -> None:
    good = {**fixture("twelvedata/quote.json"), "symbol": "GE"}
    twelvedata.http.script("/quote", Fault.json({"AAPL": body, "GE": good, "ZZZZ": body}))
    await one_round(fetcher)
    assert [r["symbol"] for r in await db.fetch("SELECT symbol FROM ticks")] == ["GE"]
    assert sample(fetcher, "provider_dropped_total", kind=kind) == 2


async def test_an_html_page_is_dropped(
    fetcher: Fetcher, twelvedata: FakeTwelveData, db: asyncpg.Connection
) -> None:
    twelvedata.http.script("/quote", Fault.html(200))
    await one_round(fetcher)
    assert await db.fetchval("SELECT count(*) FROM ticks") == 0
    assert sample(fetcher, "provider_dropped_total", kind="html_body") == 1


async def test_the_limiter_counts_credits_per_symbol(
    database_url: str, twelvedata: FakeTwelveData
) -> None:
    # 4 symbols at 4 credits per 0.5 s: each round costs a whole period's budget
    settings = twelvedata_settings(
        database_url,
        twelvedata,
        symbols="AAPL,NVDA,MSFT,GE",
        twelvedata_rate_limit=4,
        twelvedata_rate_period=0.5,
    )
    async with opened(settings) as fetcher:
        for _ in range(4):
            await fetcher.fetch_prices_once()
    calls = twelvedata.http.calls("/quote")
    assert len(calls) == 4
    assert calls[-1].at - calls[0].at >= 1.4  # the first is free (a full bucket), then 1 per period


async def test_one_minute_bars_come_from_time_series_in_spans_of_one_call(
    twelvedata: FakeTwelveData,
) -> None:
    provider = TwelveDataProvider(
        twelvedata.key,
        base_url=twelvedata.base_url,
        rate_limit=100,
        rate_period=1.0,
        concurrency=2,
        timeout=5.0,
        daily_limit=None,
    )
    end = datetime(2026, 3, 9, 15, 0, tzinfo=UTC)
    start = end - BARS_SPAN - timedelta(minutes=30)  # one call more than a span
    try:
        assert provider.has_history
        bars = await provider.bars(["AAPL", "ZZZZ"], start, end)
    finally:
        await provider.aclose()
    calls = twelvedata.http.calls("/time_series")
    assert [c.params["symbol"] for c in calls] == ["AAPL", "AAPL", "ZZZZ", "ZZZZ"]
    assert {c.params["interval"] for c in calls} == {"1min"}
    assert int(calls[0].params["outputsize"]) == MAX_POINTS
    assert {b.symbol for b in bars} == {"AAPL"}  # ZZZZ is unknown to the vendor: dropped
    assert [b.start for b in bars] == [start + timedelta(minutes=i) for i in range(len(bars))]
    assert bars[0].start == start and bars[-1].start == end - timedelta(minutes=1)
    for bar in bars:
        assert bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high
        assert bar.volume is not None and bar.volume > 0 and bar.source == "twelvedata"


async def test_a_symbol_is_checked_with_the_vendor_which_names_an_unknown_one(
    fetcher: Fetcher, twelvedata: FakeTwelveData
) -> None:
    provider = fetcher.provider
    assert await provider.check_symbol("AAPL") is None
    assert await provider.check_symbol("FOOBAR") == (
        "Twelve Data: symbol not found: FOOBAR. Please specify it correctly according to API "
        "Documentation."
    )
    # the known symbol's quote serves its profile and range: no second credit spent on it
    await fetcher.refresh_metadata_once(["AAPL"])
    assert len(twelvedata.http.calls("/quote")) == 2


def test_the_credits_bound_the_symbols(fetcher: Fetcher) -> None:
    limit = fetcher.provider.symbol_limit()
    assert limit is not None and limit.count == 100
    assert limit.reason == (
        "Twelve Data's plan gives 100 credits per 1 s, so at most 100 symbols are tracked "
        "(STOCKSTREAMER_TWELVEDATA_RATE_LIMIT)"
    )
