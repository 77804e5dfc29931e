"""Tick writes: one commit per row (the original design) against the fetcher's batch writer."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
from prometheus_client import CollectorRegistry

from services.common.models import Tick
from services.fetcher import queries
from services.fetcher.buffer import TickBuffer
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.writer import BatchWriter

SYMBOLS = ["GE", "AMZN", "NVDA", "INTC", "AAPL", "NFLX"]
ROW_INSERT = "INSERT INTO ticks (symbol, ts, price) VALUES ($1, $2, $3)"


def _ticks(n: int, offset: int) -> list[Tick]:
    t0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC) + timedelta(days=offset)
    return [
        Tick(SYMBOLS[i % 6], t0 + timedelta(milliseconds=i // 6), Decimal("100.25"))
        for i in range(n)
    ]


async def _per_row(url: str, ticks: list[Tick]) -> float:
    conn = await asyncpg.connect(url)
    await conn.execute(queries.ENSURE_STOCKS, SYMBOLS)
    started = time.perf_counter()
    for t in ticks:
        async with conn.transaction():  # a commit per row, as the original did
            await conn.execute(ROW_INSERT, t.symbol, t.ts, t.price)
    elapsed = time.perf_counter() - started
    await conn.close()
    return len(ticks) / elapsed


async def _batched(url: str, ticks: list[Tick]) -> float:
    buffer = TickBuffer(len(ticks))
    writer = BatchWriter(url, SYMBOLS, buffer, FetcherMetrics(CollectorRegistry()), 5000)
    buffer.put(ticks)
    started = time.perf_counter()
    while len(buffer):
        await writer.flush_once()
    elapsed = time.perf_counter() - started
    await writer.close()
    return len(ticks) / elapsed


def run(url: str) -> list[str]:
    baseline = asyncio.run(_per_row(url, _ticks(3_000, 0)))
    ours = asyncio.run(_batched(url, _ticks(120_000, 1)))
    return [
        f"| fetcher: ticks written per second (commit per row vs 5,000-tick batches) "
        f"| {baseline:,.0f}/s | {ours:,.0f}/s | {ours / baseline:.1f}x |"
    ]
