"""The healing pass on a day with no gaps: 50 symbols, every minute of the lookback stored.

Target (issue #17): under 50 ms of database time a pass, and no vendor request. Measured for a
24/7 market (1,440 minutes a symbol: the most a day can hold) and for New York hours.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
from prometheus_client import CollectorRegistry

from services.common.market import Market
from services.common.models import Bar, Profile, Tick, Week52
from services.common.retention import set_retention
from services.fetcher.config import FetcherSettings
from services.fetcher.healing import Healer
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.providers.base import Provider
from services.fetcher.providers.simulated import SimulatedProvider
from services.fetcher.service import Fetcher

SYMBOLS = [f"S{n:02d}" for n in range(50)]
PASSES = 20
TARGET_MS = 50.0


class CountingVendor(Provider):
    """A history source that only counts what it is asked for."""

    name = "counting"
    has_history = True

    def __init__(self) -> None:
        self.asked = 0

    async def quotes(self, symbols: Sequence[str]) -> list[Tick]:
        return []

    async def profiles(self, symbols: Sequence[str]) -> list[Profile]:
        return []

    async def week52(self, symbols: Sequence[str]) -> list[Week52]:
        return []

    async def bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> list[Bar]:
        self.asked += 1
        return []


def _bars(market: Market, start: datetime, end: datetime) -> list[Bar]:
    price = Decimal("100.00")
    return [
        Bar(s, m, price, price + 1, price - 1, price, volume=100, source="counting")
        for m in market.open_minutes(start, end)
        for s in SYMBOLS
    ]


async def _passes(url: str, calendar: str) -> tuple[list[float], int, int]:
    market = Market(calendar)
    now = datetime.now(UTC)
    settings = FetcherSettings(
        database_url=url, symbols=",".join(SYMBOLS), calendar=calendar, backfill=0
    )
    metrics = FetcherMetrics(CollectorRegistry())
    fetcher = Fetcher(settings, SimulatedProvider(), metrics, history=None)
    vendor = CountingVendor()
    vendor.attach(lambda kind, detail: None)
    healer = Healer(fetcher.writer, SYMBOLS, market, fetcher._call, fetcher.metrics, fetcher.drops)
    bars = _bars(market, now - timedelta(days=1, minutes=5), now)
    async with fetcher.writer.use() as store:
        for i in range(0, len(bars), 10_000):
            await store.write_bars(bars[i : i + 10_000])
    times = []
    try:
        await healer.heal_once(vendor, now)  # warm
        for _ in range(PASSES):
            began = time.perf_counter()
            filled = await healer.heal_once(vendor, now)
            times.append((time.perf_counter() - began) * 1000)
            assert filled == 0
    finally:
        await fetcher.writer.close()
    return times, vendor.asked, len(bars)


async def _run(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        await set_retention(conn, timedelta(days=1), timedelta(days=400))
    finally:
        await conn.close()
    rows = []
    for calendar in ("24/7", "XNYS"):
        times, asked, stored = await _passes(url, calendar)
        p50, worst = statistics.median(times), max(times)
        ok = "ok" if worst < TARGET_MS and asked == 0 else "MISSED"
        rows.append(
            f"| healing: one pass over a day with no gaps, 50 symbols, {calendar} "
            f"({stored:,} minutes stored; {PASSES} passes; the whole pass, database and Python; "
            f"target < {TARGET_MS:.0f} ms, no vendor request) | — | p50 {p50:.1f} ms, "
            f"max {worst:.1f} ms; {asked} vendor requests | {ok} |"
        )
    return rows


def run(url: str, scale: str = "default") -> list[str]:
    return asyncio.run(_run(url))
