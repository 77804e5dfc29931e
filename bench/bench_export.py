"""CSV export of a month of one symbol's raw ticks (2,592,000 rows, one a second) through the API.

`GET /api/v1/prices.csv` from `python -m services.api` (one process) over loopback, read to the
end by a client that counts lines. Targets (issue #19): at least 200,000 rows/s, and the API
process's resident memory growing by under 50 MB while it streams. Beside it, the ceiling: the
same rows as PostgreSQL's own `COPY ... TO STDOUT (FORMAT csv)` read by asyncpg.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from bench.history_data import _csv, log
from bench.processes import rss_bytes, start_api, track
from services.common.retention import set_retention
from services.fetcher import queries
from services.fetcher.store import create_partitions, partitions_for

SYMBOL = "S00"
DAYS = 30
ROWS = DAYS * 86_400
TARGET_RATE = 200_000
TARGET_GROWTH_MB = 50.0


async def _load(url: str) -> tuple[datetime, datetime]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(queries.ENSURE_STOCKS, [SYMBOL])
        await track(conn, [SYMBOL])
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        start = end - timedelta(days=DAYS)
        await set_retention(conn, timedelta(days=DAYS + 2), timedelta(days=400))
        await create_partitions(conn, partitions_for(start, end))
        await conn.execute(
            "CREATE TEMP TABLE staging (symbol text, ts double precision, price float8)"
        )
        for day in range(DAYS):
            await conn.execute("TRUNCATE staging")
            day_start = start + timedelta(days=day)
            await conn.copy_to_table(
                "staging",
                source=_csv([SYMBOL], day_start, 24),
                format="csv",
                columns=["symbol", "ts", "price"],
            )
            await conn.execute(
                "INSERT INTO ticks (symbol, ts, price) SELECT symbol, to_timestamp(ts), price"
                " FROM staging"
            )
        await conn.execute("VACUUM ANALYZE ticks")
        log(f"{ROWS:,} ticks loaded")
        return start, end
    finally:
        await conn.close()


async def _ceiling(url: str, start: datetime, end: datetime) -> float:
    conn = await asyncpg.connect(url)
    rows = 0

    async def sink(chunk: bytes) -> None:
        nonlocal rows
        rows += chunk.count(b"\n")

    try:
        began = time.perf_counter()
        await conn.copy_from_query(
            "SELECT symbol, ts, price FROM ticks WHERE symbol = $1 AND ts >= $2 AND ts < $3"
            " ORDER BY ts",
            SYMBOL,
            start,
            end,
            output=sink,
            format="csv",
        )
        elapsed = time.perf_counter() - began
    finally:
        await conn.close()
    assert rows == ROWS, rows
    return rows / elapsed


async def _export(url: str, start: datetime, end: datetime) -> tuple[float, float]:
    api, base = await start_api(url)
    try:
        pid = api.pid
        before = rss_bytes(pid) / 2**20
        peak = before
        lines = 0
        params = {
            "symbols": SYMBOL,
            "start": start.isoformat(),
            "end": (end - timedelta(milliseconds=1)).isoformat(),
        }
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            began = time.perf_counter()
            async with client.stream("GET", "/api/v1/prices.csv", params=params) as answer:
                assert answer.status_code == 200
                async for chunk in answer.aiter_raw():
                    lines += chunk.count(b"\n")
                    peak = max(peak, rss_bytes(pid) / 2**20)
            elapsed = time.perf_counter() - began
    finally:
        api.stop()
    assert lines == ROWS + 1, lines  # and the header
    return ROWS / elapsed, peak - before


async def _run(url: str) -> list[str]:
    start, end = await _load(url)
    ceiling = await _ceiling(url, start, end)
    rate, growth = await _export(url, start, end)
    ok = "ok" if rate >= TARGET_RATE and growth < TARGET_GROWTH_MB else "MISSED"
    return [
        f"| export: a month of one symbol's raw ticks ({ROWS:,} rows) as `/api/v1/prices.csv`, "
        f"rows a second and the API's memory growth (target >= {TARGET_RATE:,}/s, < "
        f"{TARGET_GROWTH_MB:.0f} MB), vs PostgreSQL's own COPY of the same rows (the ceiling) "
        f"| {ceiling:,.0f}/s | {rate:,.0f}/s, +{growth:.1f} MB | {rate / ceiling:.2f}x, {ok} |"
    ]


def run(url: str, scale: str = "default") -> list[str]:
    return asyncio.run(_run(url))
