"""The dashboard's page: the CPU one page load costs, and a flood of page loads from one address."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import Counter

import asyncpg
import httpx
from bokeh.application import Application
from bokeh.application.handlers.directory import DirectoryHandler
from bokeh.settings import settings as bokeh_settings
from prometheus_client import CollectorRegistry

from bench.processes import cpu_seconds, rss_bytes, start_api, track
from services.common.contract import Stock
from services.common.symbols import parse_symbols
from services.dashboard.__main__ import APP_DIR
from services.dashboard.config import DashboardSettings
from services.dashboard.metrics import DashboardMetrics
from services.dashboard.runtime import build_runtime, set_runtime
from services.fetcher.config import DEFAULT_SYMBOLS
from services.runner.embedded_db import free_port
from services.runner.processes import ServiceProcess

SYMBOLS = sorted(parse_symbols(DEFAULT_SYMBOLS))
BUILDS = 20
FLOOD, FLOOD_SECONDS = 500, 10.0
FLOODER = "127.0.0.2"  # the flood's address; the other viewer asks from 127.0.0.1


def _stock(symbol: str) -> Stock:
    return Stock(
        symbol=symbol,
        name=f"{symbol} Inc.",
        logo_url=f"/api/v1/stocks/{symbol}/logo",
        week52_high=130.0,
        week52_low=70.0,
        previous_close=100.0,
        metadata_updated_at=None,
        last_price=101.0,
        last_ts=None,
        change=1.0,
        change_pct=1.0,
    )


def _build_cpu(validate: bool) -> float:
    """Median CPU milliseconds of one page's document, built the way the server builds it."""
    bokeh_settings.perform_document_validation.set_value(validate)
    try:
        app = Application(DirectoryHandler(filename=str(APP_DIR)))
        app.create_document()  # the first build compiles the app: not counted
        times = []
        for _ in range(BUILDS):
            started = time.process_time()
            app.create_document()
            times.append(time.process_time() - started)
    finally:
        bokeh_settings.perform_document_validation.unset_value()
    return statistics.median(times) * 1000


async def _bare_get(port: int, answers: list[tuple[int | str, float]]) -> None:
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(FLOODER, 0)), 60
        )
        writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 60)
        answers.append((int(line.split()[1]) if line else "closed", time.monotonic() - started))
        writer.close()
    except (TimeoutError, OSError) as exc:
        answers.append((type(exc).__name__, time.monotonic() - started))


async def _flood(url: str) -> str:
    conn = await asyncpg.connect(url)
    await conn.executemany(
        "INSERT INTO stocks (symbol, name) VALUES ($1, $2)", [(s, f"{s} Inc.") for s in SYMBOLS]
    )
    await track(conn, list(SYMBOLS))
    await conn.close()
    api, api_url = await start_api(url)
    port = free_port()
    env = {
        "STOCKSTREAMER_API_URL": api_url,
        "STOCKSTREAMER_DASHBOARD_PORT": str(port),
        "STOCKSTREAMER_LOG_LEVEL": "WARNING",
    }
    dashboard = ServiceProcess("services.dashboard", env).start()
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(dashboard.wait_http, f"{base}/healthz")
        await asyncio.sleep(2)  # the feed connects, the stocks arrive
        rss_before, cpu_before = rss_bytes(dashboard.pid) / 2**20, cpu_seconds(dashboard.pid)
        answers: list[tuple[int | str, float]] = []
        loop = asyncio.get_running_loop()
        start, tasks = loop.time(), []
        for i in range(FLOOD):
            tasks.append(asyncio.create_task(_bare_get(port, answers)))
            await asyncio.sleep(max(0.0, start + (i + 1) * FLOOD_SECONDS / FLOOD - loop.time()))
        async with httpx.AsyncClient(timeout=60) as client:
            asked = time.monotonic()
            page = await client.get(f"{base}/")
            other = time.monotonic() - asked
        await asyncio.gather(*tasks)
        cpu = cpu_seconds(dashboard.pid) - cpu_before
        await asyncio.sleep(15)  # the flood's unconnected sessions expire
        rss_after = rss_bytes(dashboard.pid) / 2**20
    finally:
        dashboard.stop()
        api.stop()
    counts = Counter(status for status, _ in answers)
    refused = sorted(seconds for status, seconds in answers if status in (429, 503))
    p99 = statistics.quantiles(refused, n=100)[98] * 1000 if len(refused) > 1 else 0.0
    return (
        f"| dashboard: 500 bare `GET /` in 10 s from one address (default limits), then one page "
        f"from another address | before: later page loads time out for minutes (see below) | "
        f"{counts[200]} built, {counts[429]} × 429, {counts[503]} × 503 (refusals p99 "
        f"{p99:.0f} ms); the other page {page.status_code} in {other * 1000:.0f} ms; "
        f"dashboard CPU {cpu:.1f} s; RSS {rss_before:.0f} → {rss_after:.0f} MB | — |"
    )


def run(url: str, scale: str = "default") -> list[str]:
    logging.disable(logging.WARNING)  # the feed's complaints about no API, in-process
    try:
        runtime = build_runtime(
            DashboardSettings(api_url="http://127.0.0.1:9"), DashboardMetrics(CollectorRegistry())
        )
        runtime.feed.stocks = {s: _stock(s) for s in SYMBOLS}
        set_runtime(runtime)
        checked, served = _build_cpu(True), _build_cpu(False)
    finally:
        logging.disable(logging.NOTSET)
        set_runtime(None)
    rows = [
        f"| dashboard: CPU to build one page's document, 6 stocks, median of {BUILDS} (Bokeh "
        f"validating every new document, its default, vs as served) | {checked:.0f} ms | "
        f"{served:.0f} ms | {checked / served:.1f}x |"
    ]
    rows.append(asyncio.run(_flood(url)))
    return rows
