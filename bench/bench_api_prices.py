"""Chart history: every stored tick (the original design) against the API's downsampled series."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import asyncpg
import httpx

from bench.bench_api_stream import start_api
from services.fetcher import queries

SYMBOLS = ["GE", "AMZN", "NVDA", "INTC", "AAPL", "NFLX"]
START, END = "2026-01-05T00:00:00Z", "2026-01-12T00:00:00Z"  # the chart's default week, 1 tick/s
FILL = """
INSERT INTO ticks (symbol, ts, price)
SELECT s, t, 100 + random() * 10
FROM unnest($1::text[]) AS s,
     generate_series($2::timestamptz, $3::timestamptz, interval '1 second') AS t
ON CONFLICT DO NOTHING
"""
RAW = "SELECT symbol, ts, price FROM ticks WHERE ts >= $1 AND ts <= $2 ORDER BY symbol, ts"


async def _both(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    await conn.execute(queries.ENSURE_STOCKS, SYMBOLS)
    start, end = (datetime.fromisoformat(t) for t in (START, END))
    await conn.execute(FILL, SYMBOLS, start, end)
    await conn.execute("VACUUM ANALYZE ticks")  # as autovacuum leaves it after inserts
    rows = await conn.fetchval("SELECT count(*) FROM ticks")

    began = time.perf_counter()
    raw = await conn.fetch(RAW, start, end)
    raw_s = time.perf_counter() - began
    await conn.close()

    api, base = await start_api(url)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            params: dict[str, str | int] = {"start": START, "end": END, "max_points": 1000}
            await http.get("/api/v1/prices", params=params)  # warm the cache, as raw was
            began = time.perf_counter()
            response = await http.get("/api/v1/prices", params=params)
            api_s = time.perf_counter() - began
    finally:
        api.stop()
    points = sum(len(s["ts"]) for s in response.json()["series"])
    return [
        f"| api: a week of 1 s ticks for 6 symbols ({rows:,} rows) to a chart: every row "
        f"(SQL only) vs `/prices?max_points=1000` (HTTP, JSON) | {len(raw):,} points, "
        f"{raw_s * 1000:.0f} ms | {points:,} points, {api_s * 1000:.0f} ms "
        f"| {len(raw) / points:.0f}x fewer points |"
    ]


def run(url: str) -> list[str]:
    return asyncio.run(_both(url))
