"""Tick writes with bars kept: one commit per row (the original design), the fetcher's writer,
and a plain COPY into an identical table (the machine's ceiling), in one run.

Targets (issue #9): the live path >= 60,000 ticks/s and >= 0.6 x the COPY ceiling.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
from prometheus_client import CollectorRegistry

from services.common.models import Tick
from services.common.retention import set_retention
from services.fetcher import queries
from services.fetcher.buffer import TickBuffer
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.store import create_partitions, partitions_for
from services.fetcher.writer import BatchWriter

SYMBOLS = ["GE", "AMZN", "NVDA", "INTC", "AAPL", "NFLX"]
BATCH = 5000
ROWS = 240_000
ROW_INSERT = "INSERT INTO ticks (symbol, ts, price) VALUES ($1, $2, $3)"
# An identical table (same columns, keys, checks, foreign key and partitioning) for the ceiling.
CEILING_TABLE = """
CREATE TABLE copy_ceiling (LIKE ticks INCLUDING ALL,
                           FOREIGN KEY (symbol) REFERENCES stocks (symbol))
    PARTITION BY RANGE (ts);
CREATE TABLE copy_ceiling_p PARTITION OF copy_ceiling FOR VALUES FROM (MINVALUE) TO (MAXVALUE);
"""
LONG = timedelta(days=3650)


def _ticks(n: int, start: datetime) -> list[Tick]:
    """One tick per symbol every 10 ms, prices on a cent grid."""
    rng = random.Random(1)  # noqa: S311 - benchmark data
    return [
        Tick(
            SYMBOLS[i % 6],
            start + timedelta(milliseconds=i // 6 * 10),
            Decimal(rng.randint(10_000, 11_000)) / 100,
        )
        for i in range(n)
    ]


async def _per_row(url: str, ticks: list[Tick]) -> float:
    conn = await asyncpg.connect(url)
    await create_partitions(conn, partitions_for(ticks[0].ts, ticks[-1].ts))
    began = time.perf_counter()
    for t in ticks:
        async with conn.transaction():  # a commit per row, as the original did
            await conn.execute(ROW_INSERT, t.symbol, t.ts, float(t.price))
    elapsed = time.perf_counter() - began
    await conn.close()
    return len(ticks) / elapsed


async def _writer(url: str, batches: list[list[Tick]]) -> float:
    """Ticks per second through the fetcher's writer (ticks, their bars, NOTIFY per batch)."""
    count = sum(len(b) for b in batches)
    buffer = TickBuffer(count)
    owner = await asyncpg.connect(url)
    try:
        await set_retention(owner, LONG, LONG)
    finally:
        await owner.close()
    writer = BatchWriter(url, SYMBOLS, buffer, FetcherMetrics(CollectorRegistry()), BATCH)
    async with writer.use():
        pass  # connect, retention and today's partitions before the clock starts
    elapsed = 0.0
    for batch in batches:
        buffer.put(batch)
        began = time.perf_counter()
        await writer.flush_once()
        elapsed += time.perf_counter() - began
    await writer.close()
    assert len(buffer) == 0, "the writer left ticks behind"  # noqa: S101
    return count / elapsed


async def _copy(url: str, ticks: list[Tick], numeric: bool = False) -> float:
    """A plain COPY, batch by batch, into a table identical to `ticks`: the ceiling."""
    conn = await asyncpg.connect(url)
    table = "copy_numeric" if numeric else "copy_ceiling"
    await conn.execute(CEILING_TABLE.replace("copy_ceiling", table))
    if numeric:  # the same table with the price type ticks had before
        await conn.execute(f"ALTER TABLE {table} ALTER COLUMN price TYPE numeric")
    records = [(t.symbol, t.ts, t.price if numeric else float(t.price), t.volume) for t in ticks]
    began = time.perf_counter()
    for i in range(0, len(records), BATCH):
        async with conn.transaction():
            await conn.copy_records_to_table(
                table,
                records=records[i : i + BATCH],
                columns=["symbol", "ts", "price", "volume"],
            )
    elapsed = time.perf_counter() - began
    await conn.close()
    return len(records) / elapsed


async def _all(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    await conn.execute(queries.ENSURE_STOCKS, SYMBOLS)
    await conn.close()
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=12)
    baseline = await _per_row(url, _ticks(3_000, base - timedelta(hours=6)))
    live = _ticks(ROWS, base)
    in_order = [live[i : i + BATCH] for i in range(0, ROWS, BATCH)]
    # late and out-of-order ticks, with some delivered twice: the path that must deduplicate
    rng = random.Random(2)  # noqa: S311 - benchmark data
    mixed = _ticks(ROWS, base + timedelta(hours=2))
    mixed += rng.sample(mixed, ROWS // 20)
    rng.shuffle(mixed)
    shuffled = [mixed[i : i + BATCH] for i in range(0, len(mixed), BATCH)]
    copy = await _copy(url, _ticks(ROWS, base + timedelta(hours=4)))
    copy_numeric = await _copy(url, _ticks(ROWS, base + timedelta(hours=4)), numeric=True)
    fast = await _writer(url, in_order)
    slow = await _writer(url, shuffled)
    ok = fast >= 60_000 and fast >= 0.6 * copy
    return [
        f"| fetcher: ticks written per second with bars kept (commit per row vs in-order "
        f"{BATCH:,}-tick batches) | {baseline:,.0f}/s | {fast:,.0f}/s | {fast / baseline:.0f}x |",
        f"| fetcher: live path vs a plain COPY into an identical table (the ceiling; target "
        f">= 60,000/s and >= 0.6x) | {copy:,.0f}/s | {fast:,.0f}/s "
        f"| {fast / copy:.2f}x {'ok' if ok else 'MISSED'} |",
        f"| fetcher: plain COPY into the identical table, prices as numeric vs as double precision "
        f"(why prices are doubles) | {copy_numeric:,.0f}/s | {copy:,.0f}/s "
        f"| {copy / copy_numeric:.2f}x |",
        f"| fetcher: late, out-of-order batches with 5% duplicates (deduplicated on insert) "
        f"| {copy:,.0f}/s (COPY) | {slow:,.0f}/s | {slow / copy:.2f}x |",
    ]


def run(url: str, scale: str = "default") -> list[str]:
    return asyncio.run(_all(url))
