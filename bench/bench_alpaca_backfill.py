"""A year of minute bars for 6 symbols backfilled from Alpaca (its fake, on loopback), within the
free plan's 200 requests a minute, by the fetcher as `python -m services.fetcher` runs it.

Targets (issue #17): the last session of every symbol on the chart within 10 s of start; the
whole year within 3 minutes. The fake serves New York hours (XNYS) with 5% of minutes tradeless,
as IEX's feed has them, and answers 429 past 200 requests a minute.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import asyncpg
from prometheus_client import CollectorRegistry

from services.common.market import Market
from services.common.retention import set_retention
from services.fetcher.config import FetcherSettings
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.providers import create_providers
from services.fetcher.service import Fetcher
from tests.fakes.alpaca import FakeAlpaca, settings_env

SYMBOLS = ["GE", "AMZN", "NVDA", "INTC", "AAPL", "NFLX"]
WINDOWS = {"default": timedelta(days=365), "full": timedelta(days=400)}
LAST_TARGET = 10.0
ALL_TARGET = 180.0

MINUTE_BARS = """
SELECT symbol, count(*) AS n FROM bars
WHERE width_s = 60 AND symbol = ANY($1::text[]) AND bucket >= $2 AND bucket < $3
GROUP BY symbol
"""


def _expected(fake: FakeAlpaca, start: datetime, end: datetime) -> dict[str, int]:
    return {s: len(fake.minute_bars(s, start, end)) for s in SYMBOLS}


async def _counts(conn: asyncpg.Connection, start: datetime, end: datetime) -> dict[str, int]:
    return {r["symbol"]: r["n"] for r in await conn.fetch(MINUTE_BARS, SYMBOLS, start, end)}


async def _run(url: str, window: timedelta) -> list[str]:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    market = Market("XNYS")
    fake = await FakeAlpaca(
        start=now - window - timedelta(days=7), calendar="XNYS", trade_interval=1.0
    ).start()
    conn = await asyncpg.connect(url)
    try:
        await set_retention(conn, timedelta(days=30), timedelta(days=400))
        # The fetcher starts a few seconds after `now`, so its window's first minute is the next one
        # (this one matters when a year ago was a session).
        start = now - window + timedelta(minutes=1)
        last_open, last_close = market.sessions(now - timedelta(days=7), now)[-1]
        last = (last_open.replace(second=0), last_close)
        expected_last = _expected(fake, *last)
        expected_all = _expected(fake, start, now)
        total = sum(expected_all.values())
        env = settings_env(fake)
        settings = FetcherSettings(
            database_url=url,
            provider="alpaca",
            symbols=",".join(SYMBOLS),
            alpaca_api_key_id=env["ALPACA_API_KEY_ID"],
            alpaca_api_secret_key=env["ALPACA_API_SECRET_KEY"],
            alpaca_data_url=fake.url,
            alpaca_trading_url=fake.url,
            alpaca_stream_url=fake.stream_url,
            calendar="XNYS",
            backfill=window,
            heal_interval=3600,
            fetcher_metrics_port=0,
        )
        chain, history = create_providers(settings)
        fetcher = Fetcher(settings, chain, FetcherMetrics(CollectorRegistry()), history=history)
        began = time.perf_counter()
        task = asyncio.create_task(fetcher.run())
        last_at = all_at = None
        while all_at is None and time.perf_counter() - began < 900:
            await asyncio.sleep(0.25 if last_at is None else 1.0)
            if last_at is None:
                got = await _counts(conn, *last)
                if all(got.get(s, 0) >= n for s, n in expected_last.items()):
                    last_at = time.perf_counter() - began
            got = await _counts(conn, start, now)
            if all(got.get(s, 0) >= n for s, n in expected_all.items()):
                all_at = time.perf_counter() - began
        fetcher.stop()
        await task
        calls = fake.calls("/v2/stocks/bars")
        minute = [c for c in calls if c.params.get("timeframe") == "1Min"]
        pages = sum(1 for c in minute if c.params.get("page_token"))
    finally:
        await conn.close()
        await fake.stop()
    assert last_at is not None and all_at is not None, "backfill did not finish"
    rate = total / all_at
    ok = "ok" if last_at <= LAST_TARGET and all_at <= ALL_TARGET else "MISSED"
    days = window.days
    return [
        f"| backfill: {days} days of Alpaca (IEX) 1-minute bars, 6 symbols, New York hours, from "
        f"its fake within 200 requests a minute: the last session of every symbol on the chart / "
        f"the whole window (target <= {LAST_TARGET:.0f} s / <= {ALL_TARGET:.0f} s) | Finnhub's "
        f"free tier: no history | {last_at:.1f} s / {all_at:.1f} s: {total:,} bars, "
        f"{rate:,.0f} bars/s, {len(minute)} requests of 1-minute bars ({pages} of them next "
        f"pages), {fake.throttled} answered 429 | {ok} |"
    ]


def run(url: str, scale: str = "default") -> list[str]:
    return asyncio.run(_run(url, WINDOWS[scale]))
