"""Finnhub over real HTTP (a fake on a loopback port) into the real database."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.fetcher.service import Fetcher
from tests.fakes.finnhub import FakeFinnhub
from tests.fakes.server import Fault, fixture
from tests.utils.vendors import finnhub_settings, one_round, opened, sample


@pytest.fixture
async def fetcher(database_url: str, finnhub: FakeFinnhub) -> AsyncIterator[Fetcher]:
    async with opened(finnhub_settings(database_url, finnhub, symbols="AAPL")) as fetcher:
        yield fetcher


async def test_quotes_profiles_and_52_week_ranges_reach_the_database(
    database_url: str, db: asyncpg.Connection, finnhub: FakeFinnhub
) -> None:
    async with opened(finnhub_settings(database_url, finnhub, symbols="AAPL,GE")) as fetcher:
        await one_round(fetcher)
        assert await fetcher.refresh_metadata_once()
    ticks = await db.fetch("SELECT symbol, price, ts, backfilled FROM ticks ORDER BY symbol")
    assert [t["symbol"] for t in ticks] == ["AAPL", "GE"]
    assert all(t["price"] > 0 and not t["backfilled"] for t in ticks)
    stocks = {r["symbol"]: r for r in await db.fetch("SELECT * FROM stocks")}
    assert stocks["AAPL"]["name"] == "AAPL Inc"
    assert stocks["AAPL"]["logo_url"] == "https://static.finnhub.io/logo/AAPL.png"
    # Finnhub has no logo for GE: the generated badge stands in
    assert stocks["GE"]["logo_url"].startswith("data:image/svg+xml;base64,")
    metric = fixture("finnhub/metric.json")["metric"]
    assert float(stocks["AAPL"]["week52_high"]) == metric["52WeekHigh"]
    assert float(stocks["AAPL"]["week52_low"]) == metric["52WeekLow"]
    assert float(stocks["AAPL"]["previous_close"]) == fixture("finnhub/quote.json")["pc"]
    # the key travels in a header, never in the URL
    assert all("token" not in r.params for r in finnhub.http.requests)
    assert {r.headers["x-finnhub-token"] for r in finnhub.http.requests} == {finnhub.key}


async def test_a_closed_market_writes_nothing_new(
    fetcher: Fetcher, finnhub: FakeFinnhub, db: asyncpg.Connection
) -> None:
    closed = fixture("finnhub/quote.json")  # same `t` every time: no trade since
    finnhub.http.script("/api/v1/quote", Fault.json(closed), Fault.json(closed))
    await one_round(fetcher)
    await one_round(fetcher)
    assert await db.fetchval("SELECT count(*) FROM ticks") == 1


async def test_an_unknown_symbol_is_dropped_and_said_once(
    database_url: str,
    db: asyncpg.Connection,
    finnhub: FakeFinnhub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with opened(finnhub_settings(database_url, finnhub, symbols="AAPL,ZZZZ")) as fetcher:
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                await one_round(fetcher)
    assert await db.fetchval("SELECT count(*) FROM ticks WHERE symbol = 'ZZZZ'") == 0
    assert await db.fetchval("SELECT count(*) FROM ticks WHERE symbol = 'AAPL'") >= 1
    assert sample(fetcher, "provider_dropped_total", kind="unknown_symbol") == 3
    said = [r for r in caplog.records if "does not know" in r.getMessage()]
    assert len(said) == 1 and said[0].__dict__["symbol"] == "ZZZZ"


async def test_429_waits_as_long_as_retry_after_says(
    fetcher: Fetcher, finnhub: FakeFinnhub, db: asyncpg.Connection
) -> None:
    finnhub.http.script("/api/v1/quote", Fault.json({}, 429, headers={"Retry-After": "1"}))
    await one_round(fetcher)
    first, second = finnhub.http.calls("/api/v1/quote")
    assert second.at - first.at >= 0.95  # retry_wait_max is 0.05 s: the header ruled
    assert sample(fetcher, "provider_errors_total", kind="rate_limited") == 1
    assert await db.fetchval("SELECT count(*) FROM ticks") == 1


async def test_5xx_is_retried_then_the_round_is_skipped(
    fetcher: Fetcher, finnhub: FakeFinnhub, db: asyncpg.Connection
) -> None:
    finnhub.http.script("/api/v1/quote", *[Fault.html(502)] * 3)
    await one_round(fetcher)
    assert sample(fetcher, "provider_errors_total", kind="http_5xx") == 3
    assert sample(fetcher, "rounds_skipped_total", call="quotes") == 1
    assert await db.fetchval("SELECT count(*) FROM ticks") == 0
    await one_round(fetcher)  # the vendor is back
    assert await db.fetchval("SELECT count(*) FROM ticks") == 1


async def test_one_failing_symbol_does_not_cost_the_others(
    database_url: str, db: asyncpg.Connection, finnhub: FakeFinnhub
) -> None:
    finnhub.http.script("/api/v1/quote", Fault(500, "oops"))
    async with opened(finnhub_settings(database_url, finnhub, provider_concurrency=1)) as fetcher:
        await one_round(fetcher)
    assert await db.fetchval("SELECT count(*) FROM ticks") == 1
    assert sample(fetcher, "provider_dropped_total", kind="http_5xx") == 1


async def test_a_timeout_is_retried(
    database_url: str, db: asyncpg.Connection, finnhub: FakeFinnhub
) -> None:
    settings = finnhub_settings(database_url, finnhub, symbols="AAPL", provider_timeout=0.2)
    finnhub.http.script("/api/v1/quote", Fault.json({}, delay=1.0))
    async with opened(settings) as fetcher:
        await one_round(fetcher)
    assert sample(fetcher, "provider_errors_total", kind="timeout") == 1
    assert await db.fetchval("SELECT count(*) FROM ticks") == 1


QUOTE = fixture("finnhub/quote.json")


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault.html(200), "html_body"),
        (Fault(200, ""), "empty_body"),
        (Fault(200, '{"c": 261.74, "t": '), "malformed_json"),
        (Fault.json({**QUOTE, "c": "261.74"}), "invalid_fields"),  # a string for a number
        (Fault.json({"c": 261.74}), "invalid_fields"),  # fields missing
        (Fault.json([QUOTE]), "invalid_fields"),  # wrong shape
        (Fault.json({**QUOTE, "t": "yesterday"}), "invalid_fields"),
        (Fault.json({**QUOTE, "t": 10**15}), "invalid_fields"),  # past what a datetime holds
    ],
)
async def test_malformed_responses_are_dropped_counted_never_written(
    fetcher: Fetcher, finnhub: FakeFinnhub, db: asyncpg.Connection, fault: Fault, kind: str
) -> None:
    finnhub.http.script("/api/v1/quote", fault)
    await one_round(fetcher)
    assert await db.fetchval("SELECT count(*) FROM ticks") == 0
    assert sample(fetcher, "provider_dropped_total", kind=kind) == 1
    await one_round(fetcher)  # never fatal: the next round is written
    assert await db.fetchval("SELECT count(*) FROM ticks") == 1


async def test_a_rate_limit_message_with_http_200_backs_off(
    fetcher: Fetcher, finnhub: FakeFinnhub, db: asyncpg.Connection
) -> None:
    finnhub.http.script("/api/v1/quote", Fault.json(fixture("finnhub/limit_200.json")))
    await one_round(fetcher)
    assert sample(fetcher, "provider_errors_total", kind="rate_limited") == 1
    assert await db.fetchval("SELECT count(*) FROM ticks") == 1  # the retry got through


async def test_a_wrong_key_takes_the_provider_out_without_retrying(
    database_url: str, finnhub: FakeFinnhub
) -> None:
    settings = finnhub_settings(database_url, finnhub, finnhub_api_key="not-the-key")
    async with opened(settings) as fetcher:
        await fetcher.fetch_prices_once()
    assert sample(fetcher, "provider_errors_total", kind="unauthorized") == 1
    assert len(finnhub.http.calls("/api/v1/quote")) == 2  # one per symbol, none retried
    assert len(fetcher.buffer) == 0
    assert sample(fetcher, "provider_out", provider="finnhub") == 1
    assert fetcher.exit_code == 1  # the only provider of the chain: the fetcher stops
