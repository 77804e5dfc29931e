"""The API's queries read what their answer needs, as their plans show (EXPLAIN ANALYZE)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import asyncpg

from services.api import queries
from tests.utils.api import T0, Market

LIMIT = 100  # ticks replayed at most, for these tests


def rows_read(node: dict[str, Any], prefix: str = "ticks") -> int:
    """Rows a plan read from the tables named `prefix`*, those its filters threw away included."""
    read = 0
    if node.get("Relation Name", "").startswith(prefix):
        per_loop = (
            node.get("Actual Rows", 0)
            + node.get("Rows Removed by Filter", 0)
            + node.get("Rows Removed by Index Recheck", 0)
        )
        read += round(per_loop * node.get("Actual Loops", 1))
    return read + sum(rows_read(child, prefix) for child in node.get("Plans", []))


async def replay(db: asyncpg.Connection, after: int, symbols: list[str]) -> tuple[list[Any], int]:
    """What a resume after `after` replays, and how many rows of ticks it read to find it."""
    query, args = queries.REPLAY_SYMBOLS_AFTER, (after, LIMIT + 1, symbols)
    plan = await db.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", *args)
    return await db.fetch(query, *args), rows_read(json.loads(plan)[0]["Plan"])


async def test_a_replay_reads_at_most_its_limit_per_symbol_however_sparse_and_old(
    db: asyncpg.Connection, market: Market
) -> None:
    dense = ["AAPL", "NVDA", "GE"]
    await market.stocks(*dense, "RARE")
    resume = await market.ticks([("RARE", T0, 1)]) - 1  # long ago: everything below follows it
    for symbol in dense:  # over two daily partitions
        await market.series(symbol, 3000, step=timedelta(seconds=40))
    rare = await market.ticks([("RARE", T0 + timedelta(hours=30), 2)])
    await market.history([("RARE", T0 - timedelta(days=1), 3)])  # backfilled: never replayed
    await db.execute("ANALYZE ticks")  # as autovacuum keeps it: the plans are those of a server

    # a sparse symbol alone: its two live ticks, not the ticks of others in between
    rows, read = await replay(db, resume, ["RARE"])
    assert [r["event_id"] for r in rows] == [resume + 1, rare]
    assert read <= 2 + 2 * LIMIT // 10, read
    # beside a dense one: at most the limit (and one) of each, not the 3,000 of AAPL before NVDA's
    rows, read = await replay(db, resume, ["NVDA", "RARE"])
    assert len(rows) == LIMIT + 1  # too many: the stream answers `reset`
    assert read <= 2 * (LIMIT + 1) + 2 * LIMIT // 10, read
    _, read = await replay(db, resume, [*dense, "RARE"])
    assert read <= 4 * (LIMIT + 1) + 4 * LIMIT // 10, read
    # a recent resume point: what follows it, in order
    rows, _ = await replay(db, rare - 5, [*dense, "RARE"])
    assert [r["event_id"] for r in rows] == list(range(rare - 4, rare + 1))


async def test_the_stocks_read_one_tick_per_symbol_for_its_price_and_source(
    db: asyncpg.Connection, market: Market
) -> None:
    symbols = ["AAPL", "NVDA", "GE"]
    await market.stocks(*symbols)
    for symbol in symbols:  # over two daily partitions
        await market.series(symbol, 1500, step=timedelta(seconds=100))
    await db.execute("UPDATE ticks SET source = 'alpaca'")
    await db.execute(
        "INSERT INTO feed (chain, active, calendar) VALUES ('{finnhub,alpaca}', 'alpaca', 'XNYS')"
    )
    await db.execute("ANALYZE ticks")

    plan = await db.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {queries.STOCKS}", None)
    rows = await db.fetch(queries.STOCKS, None)

    assert [(r["source"], r["failover"]) for r in rows] == [("alpaca", True)] * 3
    # the last tick, and the first of its day for the change (no previous close here)
    read = rows_read(json.loads(plan)[0]["Plan"])
    assert read <= 2 * len(symbols), read
