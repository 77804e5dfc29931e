"""History at every window: `/prices` from bars against the raw-tick query it replaced.

Targets (issue #9): p95 < 100 ms for 6 symbols and < 300 ms for 50, every window; the slowest
window within 3x of the fastest. The run fails loudly if a window served from bars reads raw
ticks beyond the newest one per symbol.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx

from bench.history_data import SCALES, SYMBOLS, Scale, load, log
from bench.processes import start_api
from services.api import history, queries
from services.common.bars import LEVELS, Keep
from services.common.retention import set_retention

WINDOWS = {
    "1 hour": timedelta(hours=1),
    "1 day": timedelta(days=1),
    "7 days": timedelta(days=7),
    "30 days": timedelta(days=30),
    "1 year": timedelta(days=365),
}
REQUESTS = 20
MAX_POINTS = 1000
BEFORE_TIMEOUT_S = 60


class Explaining:
    """A connection that runs each history query under EXPLAIN ANALYZE and tallies rows read."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.raw_rows = 0
        self.bar_rows = 0

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        plan = await self.conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", *args)
        self._tally(json.loads(plan)[0]["Plan"])
        return await self.conn.fetch(query, *args)

    def _tally(self, node: dict[str, Any]) -> None:
        relation = node.get("Relation Name", "")
        rows = node.get("Actual Rows", 0) * node.get("Actual Loops", 1)
        if relation.startswith("ticks"):
            self.raw_rows += rows
        elif relation.startswith("bars"):
            self.bar_rows += rows
        for child in node.get("Plans", []):
            self._tally(child)


def _pct(values: Sequence[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else 0


async def _time_api(base: str, symbols: list[str], now: datetime, span: timedelta) -> list[float]:
    params: dict[str, str | int] = {
        "symbols": ",".join(symbols),
        "start": (now - span).isoformat(),
        "end": now.isoformat(),
        "max_points": MAX_POINTS,
    }
    times = []
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        for i in range(REQUESTS + 2):
            began = time.perf_counter()
            response = await http.get("/api/v1/prices", params=params)
            elapsed = time.perf_counter() - began
            response.raise_for_status()
            if i >= 2:  # the first two warm the caches
                times.append(elapsed * 1000)
    return times


async def _before(url: str, symbols: list[str], now: datetime, span: timedelta) -> float | None:
    """One run of the replaced query, in ms (None: more than BEFORE_TIMEOUT_S)."""
    conn = await asyncpg.connect(
        url, server_settings={"statement_timeout": str(BEFORE_TIMEOUT_S * 1000)}
    )
    try:
        buckets = MAX_POINTS // 3
        step = span // buckets + timedelta(microseconds=1)
        began = time.perf_counter()
        # the raw-tick query `/prices` ran for every window before bars existed (now only for
        # windows narrower than the finest bars): per bucket, the low, high and last tick
        await conn.fetch(
            queries.DOWNSAMPLED_WINDOW,
            symbols,
            now - span,
            now,
            step // timedelta(microseconds=1),
            buckets + 1,
        )
        return (time.perf_counter() - began) * 1000
    except asyncpg.QueryCanceledError:
        return None
    finally:
        await conn.close()


async def _plan(url: str, symbols: list[str], now: datetime, span: timedelta) -> Explaining:
    conn = await asyncpg.connect(url)
    try:
        explaining = Explaining(conn)
        await history.load(explaining, symbols, now - span, now, MAX_POINTS)  # type: ignore[arg-type]
        return explaining
    finally:
        await conn.close()


async def _run(url: str, scale: Scale) -> list[str]:
    now = await load(url, scale)
    api, base = await start_api(url, STOCKSTREAMER_API_STATEMENT_TIMEOUT="60")
    rows, p95s, failures = [], {}, []
    try:
        for count in (6, 50):
            symbols = SYMBOLS[:count]
            for name, span in WINDOWS.items():
                times = await _time_api(base, symbols, now, span)
                plan = await _plan(url, symbols, now, span)
                before = await _before(url, symbols, now, span)
                p50, p95 = _pct(times, 50), _pct(times, 95)
                p95s[(count, name)] = p95
                target = 100 if count == 6 else 300
                if plan.raw_rows > 2 * count:
                    failures.append(f"{count} symbols, {name}: {plan.raw_rows} raw ticks read")
                shown = "over 60,000 ms" if before is None else f"{before:,.0f} ms"
                rows.append(
                    f"| history: `/prices` {count} symbols, {name} (max_points {MAX_POINTS}; "
                    f"rows read per symbol: {plan.bar_rows // count:,.0f} bars, "
                    f"{plan.raw_rows // count:,.0f} raw) | raw-tick query alone: {shown} "
                    f"| p50 {p50:.0f} ms, p95 {p95:.0f} ms (target < {target}) "
                    f"| {'ok' if p95 < target else 'MISSED'} |"
                )
                log(rows[-1])
            spread = max(p95s[(count, w)] for w in WINDOWS) / min(p95s[(count, w)] for w in WINDOWS)
            rows.append(
                f"| history: slowest / fastest window p95, {count} symbols | — | {spread:.1f}x "
                f"(target <= 3) | {'ok' if spread <= 3 else 'MISSED'} |"
            )
    finally:
        api.stop()
    rows += await _disk(url, scale)
    if failures:
        problems = "\n".join(failures)
        raise SystemExit(f"history plans read raw ticks beyond their raw case:\n{problems}")
    return rows


# Per level: bytes of one bar (table and key), from the level's partitions.
LEVEL_BYTES = """
SELECT sum(pg_total_relation_size(t.relid))::float8 / nullif(sum(c.reltuples), 0)
FROM pg_partition_tree($1::regclass) t JOIN pg_class c ON c.oid = t.relid
WHERE t.isleaf
"""
TABLE_BYTES = """
SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree($1::regclass) WHERE isleaf
"""
LEVEL_ROWS = """
SELECT width_s, count(*) AS n FROM bars
WHERE bucket >= $1 AND bucket < $1 + interval '1 day' GROUP BY 1
"""


async def _disk(url: str, scale: Scale) -> list[str]:
    """Bytes per tick (raw and bars), growth at the default feed, dropping a partition."""
    conn = await asyncpg.connect(url)
    try:
        raw_bytes = float(await conn.fetchval(TABLE_BYTES, "ticks"))
        day = await conn.fetchval("SELECT date_trunc('day', min(ts), 'UTC') FROM ticks")
        rows = {r["width_s"]: r["n"] for r in await conn.fetch(LEVEL_ROWS, day)}
        # a full raw day's bars, per symbol, per level: (rows, bytes per row)
        per_level = {
            level: (rows.get(level.seconds, 0) / scale.symbols,
                    await conn.fetchval(LEVEL_BYTES, level.table) or 0.0)
            for level in LEVELS
        }  # fmt: skip
        await set_retention(conn, timedelta(days=scale.raw_days - 1), timedelta(days=400))
        began = time.perf_counter()
        dropped = await conn.fetch("SELECT stockstreamer_apply_retention() AS d")
        drop_ms = (time.perf_counter() - began) * 1000
    finally:
        await conn.close()
    per_tick = raw_bytes / scale.raw_rows
    symbols, ticks_a_day = 6, 86_400  # the default feed: 6 symbols, a tick a second

    def a_day(keep: Keep) -> float:
        return symbols * sum(n * size for lv, (n, size) in per_level.items() if lv.keep is keep)

    raw_day = symbols * ticks_a_day * per_tick + a_day(Keep.RAW)
    steady = 30 * raw_day + 400 * a_day(Keep.MINUTE)
    bars_per_tick = sum(n * size for n, size in per_level.values()) / ticks_a_day
    return [
        f"| disk: a raw tick (table and keys) / the bars of every level that summarise it "
        f"| {per_tick:.0f} B | {bars_per_tick:.0f} B per tick "
        f"| {bars_per_tick / per_tick:.0%} of raw |",
        f"| disk at the default feed (6 symbols, a tick a second): a day of raw ticks and their "
        f"bars / steady state with the default retention (raw 30 days, minute bars 400 days) "
        f"| {raw_day / 1e6:.0f} MB a day | {steady / 1e9:.1f} GB, then "
        f"{365 * a_day(Keep.FOREVER) / 1e6:.0f} MB a year (hourly and daily bars) | — |",
        f"| disk: dropping {len(dropped)} expired partitions (a day of {scale.symbols} symbols' "
        f"ticks and 10 s bars) | — | {drop_ms:.0f} ms | — |",
    ]


def run(url: str, scale: str = "default") -> list[str]:
    return asyncio.run(_run(url, SCALES[scale]))
