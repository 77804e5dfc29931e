"""A real database outage: stop PostgreSQL under a running fetcher; nothing may be lost."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from services.common.migrations import migrate
from services.fetcher.config import FetcherSettings
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.service import Fetcher
from services.runner.embedded_db import EmbeddedPostgres, free_port
from tests.fetcher.scripted import RecordingProvider
from tests.utils.waiting import eventually

ORDERED_BY_TIME = "SELECT event_id FROM ticks ORDER BY ts, event_id"


@pytest.fixture
def own_server() -> Iterator[EmbeddedPostgres]:
    """A server of this test's own, since the test stops and starts it."""
    server = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="stockstreamer-outage-")) / "data",
        port=free_port(),
        durable=False,
    )
    server.start()
    asyncio.run(server.create_database())
    migrate(server.url)
    try:
        yield server
    finally:
        server.destroy()


async def _count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM ticks"))
    finally:
        await conn.close()


async def test_outage_loses_nothing_and_stores_everything_once(
    own_server: EmbeddedPostgres,
) -> None:
    # 6 symbols x 50 rounds/s; no backfill, so every stored tick is one the test saw produced
    settings = FetcherSettings(
        database_url=own_server.url, price_interval=0.02, batch_size=50, backfill=0
    )
    provider = RecordingProvider(step_seconds=0.02)
    metrics = FetcherMetrics(CollectorRegistry())
    fetcher = Fetcher(settings, provider, metrics)
    task = asyncio.create_task(fetcher.run())

    await eventually(lambda: _count(own_server.url), message="no ticks before the outage")
    await asyncio.to_thread(own_server.stop)
    # ticks keep coming and wait in memory while the server is down
    produced_at_stop = len(provider.produced)
    await eventually(lambda: len(provider.produced) > produced_at_stop + 300)
    assert len(fetcher.buffer) > 0
    assert metrics.registry.get_sample_value("stockstreamer_fetcher_database_up") == 0

    await asyncio.to_thread(own_server.start)
    await eventually(lambda: len(fetcher.buffer) == 0, timeout=20, message="buffer not flushed")
    fetcher.stop()
    await asyncio.wait_for(task, 15)

    conn = await asyncpg.connect(own_server.url)
    try:
        rows = await conn.fetch("SELECT symbol, ts, price FROM ticks ORDER BY event_id")
        ids = [r["event_id"] for r in await conn.fetch(ORDERED_BY_TIME)]
    finally:
        await conn.close()
    stored = [(r["symbol"], r["ts"], r["price"]) for r in rows]
    expected = [(t.symbol, t.ts, float(t.price)) for t in provider.produced]
    assert len(stored) == len(set(stored))  # exactly once
    assert sorted(stored) == sorted(expected)  # every produced tick, nothing else
    # flushed in order: event ids follow the ticks' own order
    assert ids == sorted(ids)
    assert (
        metrics.registry.get_sample_value(
            "stockstreamer_fetcher_ticks_dropped_total", {"reason": "buffer_full"}
        )
        is None
    )
