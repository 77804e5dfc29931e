"""`python -m services.fetcher` as a real process: writes, metrics, logs, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.common.migrations import migrate
from services.runner.embedded_db import EmbeddedPostgres, free_port
from services.runner.processes import ServiceProcess
from tests.utils.waiting import eventually

DEFAULT_SYMBOLS = {"GE", "AMZN", "NVDA", "INTC", "AAPL", "NFLX"}


def fetcher_env(url: str, port: int, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": url,
        "STOCKSTREAMER_FETCHER_METRICS_PORT": str(port),
        "STOCKSTREAMER_LOG_FORMAT": "json",
        **extra,
    }


async def _symbols_written(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        return {r["symbol"] for r in await conn.fetch("SELECT DISTINCT symbol FROM ticks")}
    finally:
        await conn.close()


async def test_writes_every_default_symbol_within_10s_and_exposes_metrics(
    database_url: str,
) -> None:
    port = free_port()
    with ServiceProcess("services.fetcher", fetcher_env(database_url, port)) as proc:
        started = time.monotonic()
        await eventually(
            lambda: _has_all(database_url),
            timeout=10,
            message="not every default symbol written within 10 s",
        )
        assert time.monotonic() - started < 10
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            metrics = (await client.get("/metrics")).text
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
        for name in (
            "stockstreamer_fetcher_ticks_fetched_total",
            "stockstreamer_fetcher_ticks_written_total",
            "stockstreamer_fetcher_batch_write_seconds_bucket",
            "stockstreamer_fetcher_buffer_depth",
            "stockstreamer_fetcher_last_write_timestamp_seconds",
        ):
            assert name in metrics
        written = [
            ln
            for ln in metrics.splitlines()
            if ln.startswith("stockstreamer_fetcher_ticks_written_total{")
        ]
        assert len(written) == len(DEFAULT_SYMBOLS)  # one series per symbol
        assert all(float(line.split()[-1]) >= 1 for line in written)
        assert proc.stop() == 0
    # one JSON object per line
    lines = [json.loads(line) for line in proc.output.splitlines() if line.strip()]
    assert {"fetcher starting", "fetcher stopped"} <= {line["message"] for line in lines}


async def _has_all(url: str) -> bool:
    return await _symbols_written(url) == DEFAULT_SYMBOLS


@pytest.fixture
def stopped_server() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="stockstreamer-sigterm-")) / "data",
        port=free_port(),
        durable=False,
    )
    server.start()
    asyncio.run(server.create_database())
    migrate(server.url)
    server.stop()
    try:
        yield server
    finally:
        server.destroy()


async def test_starts_without_a_database_and_sigterm_flushes_the_buffer(
    stopped_server: EmbeddedPostgres,
) -> None:
    port = free_port()
    env = fetcher_env(stopped_server.url, port, STOCKSTREAMER_PRICE_INTERVAL="0.1")
    proc = ServiceProcess("services.fetcher", env).start()
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/healthz")
        # no database: the fetcher runs, buffers, and says it is not ready
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 503

        def depth() -> float:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            line = next(
                ln
                for ln in text.splitlines()
                if ln.startswith("stockstreamer_fetcher_buffer_depth")
            )
            return float(line.split()[-1])

        await eventually(lambda: depth() >= 30, timeout=15)
        proc.signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        # the database comes back only after SIGTERM: the flush happens during shutdown
        await asyncio.to_thread(stopped_server.start)
        assert await asyncio.to_thread(proc.wait, 15) == 0
        assert time.monotonic() - stopped_at < 10
    finally:
        proc.stop()

    final = [json.loads(ln) for ln in proc.output.splitlines() if '"fetcher stopped"' in ln][0]
    assert final["unflushed"] == 0
    conn = await asyncpg.connect(stopped_server.url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM ticks")
    finally:
        await conn.close()
    assert stored == final["fetched"] == final["written"] >= 30
