"""A stream's resume from an old event id: rows read by the replay query, before and after.

The data set is the history benchmark's (50 symbols, a tick a second each) plus one sparse symbol:
a day of backfilled history (never replayed) and three live ticks after the others. Resuming from
the data set's first event id, the replay before this
change walked the event-id order of every symbol until it found the stream's symbols' ticks; it
now reads each symbol from its own place in a (symbol, event_id) index, at most the replay limit
(and one) of each. Rows read come from each plan under EXPLAIN ANALYZE, rows its filters threw
away included; the run fails loudly if the new query reads more than its bound.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from bench.history_data import SCALES, SYMBOLS, Scale, load, log
from bench.processes import track
from services.api import queries
from services.common.migrations import MIGRATIONS_DIR
from services.fetcher import queries as fetcher_queries

MIGRATION = MIGRATIONS_DIR / "20261202120000_ticks_symbol_event_id.sql"
LIMIT = 10_000  # the default STOCKSTREAMER_API_STREAM_REPLAY_LIMIT
TIMEOUT_S = 60
SPARSE = "RARE"

# The query it replaced for streams of some symbols: one walk of the event-id order, filtered.
BEFORE = """
SELECT symbol, floor(extract(epoch FROM ts) * 1000)::bigint AS ts_ms, price, event_id
FROM ticks
WHERE event_id > $1 AND NOT backfilled AND symbol = ANY($3::text[])
ORDER BY event_id
LIMIT $2
"""
CASES = {
    "the sparse symbol alone": [SPARSE],
    "the sparse symbol and a dense one": ["S25", SPARSE],
    "the sparse symbol and 5 dense ones": [*SYMBOLS[20:25], SPARSE],
}


def rows_read(node: dict[str, Any]) -> int:
    """Rows a plan read from ticks, those its filters threw away included."""
    read = 0
    if node.get("Relation Name", "").startswith("ticks"):
        per_loop = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
        read += round(per_loop * node.get("Actual Loops", 1))
    return read + sum(rows_read(child) for child in node.get("Plans", []))


async def _measure(
    conn: asyncpg.Connection, query: str, after: int, symbols: list[str]
) -> tuple[float | None, int | None, int]:
    """(ms, rows read, rows answered) of one run; None past TIMEOUT_S."""
    args = (after, LIMIT + 1, symbols)
    try:
        began = time.perf_counter()
        answered = len(await conn.fetch(query, *args))
        elapsed = (time.perf_counter() - began) * 1000
        plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", *args)
    except asyncpg.QueryCanceledError:
        return None, None, 0
    return elapsed, rows_read(json.loads(plan)[0]["Plan"]), answered


async def _run(url: str, scale: Scale) -> list[str]:
    return await _replays(url, await load(url, scale))


async def _replays(url: str, now: datetime) -> list[str]:
    """The sparse symbol's ticks, then each case before and after."""
    conn = await asyncpg.connect(url, server_settings={"statement_timeout": str(TIMEOUT_S * 1000)})
    rows, failures = [], []
    try:
        oldest: int = await conn.fetchval("SELECT min(event_id) FROM ticks")
        await conn.execute(fetcher_queries.ENSURE_STOCKS, [SPARSE])
        await track(conn, [SPARSE])
        # its history, backfilled (a day of a tick a second, as the fetcher backfills a symbol
        # it starts to follow), then three live ticks an hour apart
        await conn.execute(
            "INSERT INTO ticks (symbol, ts, price, backfilled)"
            " SELECT $1, $2::timestamptz + n * interval '1 second', 10, true"
            " FROM generate_series(0, 86399) AS n",
            SPARSE,
            await conn.fetchval("SELECT min(ts) FROM ticks"),
        )
        await conn.execute(
            "INSERT INTO ticks (symbol, ts, price)"
            " SELECT $1, $2::timestamptz - n * $3::interval + interval '1 millisecond', 10"
            " FROM generate_series(0, 2) AS n",
            SPARSE,
            now,
            timedelta(hours=1),
        )
        await conn.execute("VACUUM ANALYZE ticks")
        total: int = await conn.fetchval("SELECT count(*) FROM ticks WHERE NOT backfilled")
        # before: the database without the migration's index
        up, down = MIGRATION.read_text().split("-- migrate:down")
        await conn.execute(down)
        before = {name: await _measure(conn, BEFORE, oldest, s) for name, s in CASES.items()}
        began = time.perf_counter()
        await conn.execute(up)
        build_s = time.perf_counter() - began
        for name, symbols in CASES.items():
            before_ms, before_read, _ = before[name]
            after_ms, after_read, answered = await _measure(
                conn, queries.REPLAY_SYMBOLS_AFTER, oldest, symbols
            )
            assert after_ms is not None and after_read is not None  # noqa: S101
            bound = len(symbols) * (LIMIT + 1) + len(symbols) * 100  # and a few per partition
            if after_read > bound:
                failures.append(f"{name}: {after_read:,} rows read, bound {bound:,}")
            before_text = (
                f"over {TIMEOUT_S * 1000:,} ms"
                if before_ms is None
                else f"{before_read:,} rows read, {before_ms:,.0f} ms"
            )
            rows.append(
                f"| replay: resume from the oldest of {total:,} live ticks, {name} "
                f"(limit {LIMIT:,}; {answered:,} rows answered) | {before_text} "
                f"| {after_read:,} rows read, {after_ms:,.0f} ms "
                f"| within {len(symbols)} x (limit + 1) |"
            )
            log(rows[-1])
        rows.append(
            f"| replay: building the (symbol, event_id) index of live ticks (the migration) "
            f"over {total:,} ticks | — | {build_s:,.1f} s | — |"
        )
    finally:
        await conn.close()
    if failures:
        raise SystemExit("replay read more than its bound:\n" + "\n".join(failures))
    return rows


def run(url: str, scale: str = "default") -> list[str]:
    return asyncio.run(_run(url, SCALES[scale]))
