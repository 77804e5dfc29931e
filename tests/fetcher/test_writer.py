"""The single writer against a real PostgreSQL: what the database refuses costs only itself."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
from prometheus_client import CollectorRegistry

from services.common.models import Bar, Tick
from services.fetcher.buffer import TickBuffer
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.writer import BatchWriter

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def make_writer(url: str) -> BatchWriter:
    return BatchWriter(url, ["AAPL"], TickBuffer(100), FetcherMetrics(CollectorRegistry()), 100)


def batch() -> list[Tick]:
    """Five ticks; the fourth breaks the table's `volume >= 0` check (validation was bypassed)."""
    return [
        Tick("AAPL", T0 + timedelta(seconds=i), Decimal(1), volume=-1 if i == 3 else i)
        for i in range(5)
    ]


def rejected(writer: BatchWriter) -> float:
    value = writer.metrics.registry.get_sample_value(
        "stockstreamer_fetcher_ticks_dropped_total", {"reason": "rejected_by_database"}
    )
    return value or 0.0


async def test_a_refused_live_tick_is_dropped_alone(
    database_url: str, db: asyncpg.Connection
) -> None:
    writer = make_writer(database_url)
    writer.buffer.put(batch())
    try:
        await writer.flush_once()
    finally:
        await writer.close()
    stored = await db.fetch("SELECT volume FROM ticks WHERE NOT backfilled ORDER BY ts")
    assert [r["volume"] for r in stored] == [0, 1, 2, 4]
    assert rejected(writer) == 1
    assert len(writer.buffer) == 0  # nothing left to retry forever


async def test_a_refused_vendor_bar_is_dropped_alone(
    database_url: str, db: asyncpg.Connection
) -> None:
    writer = make_writer(database_url)
    start, one = T0.replace(second=0), Decimal(1)
    bars = [
        Bar("AAPL", start + timedelta(minutes=i), one, one, one, one, -1 if i == 3 else i)
        for i in range(5)
    ]  # the fourth breaks the table's `volume >= 0` check (validation was bypassed)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    try:
        assert await asyncio.wait_for(writer.submit_bars(bars), 10) == 4
    finally:
        stop.set()
        await task
        await writer.close()
    assert await db.fetchval("SELECT count(*) FROM bars WHERE width_s = 60") == 4
    assert await db.fetchval("SELECT count(*) FROM ticks WHERE backfilled") == 4
    value = writer.metrics.registry.get_sample_value(
        "stockstreamer_fetcher_bars_dropped_total", {"reason": "rejected_by_database"}
    )
    assert value == 1
