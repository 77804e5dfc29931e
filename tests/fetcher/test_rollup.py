"""Bars are exact whatever order, batching or repetition the ticks arrive in, on every path."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from services.common.bars import LEVELS
from services.common.models import Tick
from services.common.retention import set_retention
from services.fetcher import queries
from services.fetcher.rollup import rollup
from services.fetcher.store import TickStore

T0 = datetime(2026, 1, 5, 14, 29, 55, tzinfo=UTC)
BarRow = tuple[object, ...]


def market(symbol: str, count: int, seed: int) -> list[Tick]:
    """Ticks 0.1 to 30 s apart over a few hours, prices on a coarse grid so that ties happen."""
    rng = random.Random(seed)
    ts, ticks = T0, []
    for _ in range(count):
        ts += timedelta(milliseconds=rng.randint(100, 30_000))
        ticks.append(Tick(symbol, ts, Decimal(rng.randint(400, 440)) / 4))
    return ticks


def reference(ticks: Iterable[Tick], widths: Iterable[int]) -> dict[tuple[int, str, int], BarRow]:
    """Bars computed the plain way, straight from distinct ticks (independent of the writer)."""
    distinct = {(t.symbol, t.ts): float(t.price) for t in ticks}
    bars: dict[tuple[int, str, int], BarRow] = {}
    for width in widths:
        groups: dict[tuple[str, int], list[tuple[datetime, float]]] = defaultdict(list)
        for (symbol, ts), price in distinct.items():
            groups[(symbol, int(ts.timestamp()) // width * width)].append((ts, price))
        for (symbol, start), points in groups.items():
            points.sort()
            high = max(p for _, p in points)
            low = min(p for _, p in points)
            bars[(width, symbol, start)] = (
                points[0][1],
                high,
                low,
                points[-1][1],
                len(points),
                points[0][0],
                min(t for t, p in points if p == high),
                min(t for t, p in points if p == low),
                points[-1][0],
            )
    return bars


async def stored(conn: asyncpg.Connection, symbol: str) -> dict[tuple[int, str, int], BarRow]:
    rows = await conn.fetch(
        "SELECT width_s, bucket, open, high, low, close, ticks, open_ts, high_ts, low_ts, close_ts"
        " FROM bars WHERE symbol = $1",
        symbol,
    )
    return {
        (r["width_s"], symbol, int(r["bucket"].timestamp())): tuple(r.values())[2:] for r in rows
    }


def renamed(ticks: list[Tick], symbol: str) -> list[Tick]:
    return [Tick(symbol, t.ts, t.price) for t in ticks]


def batches(ticks: list[Tick], rng: random.Random) -> list[list[Tick]]:
    out, i = [], 0
    while i < len(ticks):
        size = rng.choice([1, 7, 50, 333, 1000])
        out.append(ticks[i : i + size])
        i += size
    return out


async def test_any_arrival_gives_the_bars_of_the_distinct_ticks(db: asyncpg.Connection) -> None:
    ticks = market("X", 1500, seed=7)
    expected = reference(ticks, [level.seconds for level in LEVELS])
    await db.execute(queries.ENSURE_STOCKS, ["INORDER", "SHUFFLED", "HISTORY"])
    store = await TickStore.open(db, [])  # ten years kept (conftest)
    rng = random.Random(11)

    for batch in batches(renamed(ticks, "INORDER"), rng):  # the fast path: copied in
        await store.write_live(batch)
    again = renamed(ticks, "SHUFFLED")
    again += rng.sample(again, 300)  # delivered twice
    rng.shuffle(again)  # and late, out of order
    for batch in batches(again, rng):
        await store.write_live(batch)
    for batch in batches(renamed(ticks[::-1], "HISTORY"), rng):  # backfill, newest first
        await store.write_history(batch)

    for symbol in ("INORDER", "SHUFFLED", "HISTORY"):
        bars = await stored(db, symbol)
        assert {(w, "X", b): row for (w, _, b), row in bars.items()} == expected, symbol
    assert await db.fetchval("SELECT count(*) FROM ticks") == 3 * 1500


def test_the_in_memory_bars_are_the_plain_ones() -> None:
    ticks = market("X", 2000, seed=3)
    bars = rollup((t.symbol, t.ts, float(t.price)) for t in ticks)
    got = {
        key: (b.open, b.high, b.low, b.close, b.ticks, b.open_ts, b.high_ts, b.low_ts, b.close_ts)
        for key, b in bars.items()
    }
    assert got == reference(ticks, [level.seconds for level in LEVELS])


async def test_history_beyond_the_raw_retention_is_kept_as_minute_bars(
    db: asyncpg.Connection,
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    ticks = [
        Tick("OLD", t.ts - T0 + now - timedelta(days=5), t.price) for t in market("OLD", 800, 5)
    ]
    await db.execute(queries.ENSURE_STOCKS, ["OLD"])
    await set_retention(db, timedelta(days=2), timedelta(days=30))
    store = await TickStore.open(db, [])
    rng = random.Random(2)
    # Whole minutes per write (the backfill never splits one), in any order, some ticks twice.
    minutes: dict[int, list[Tick]] = defaultdict(list)
    for tick in ticks + rng.sample(ticks, 100):
        minutes[int(tick.ts.timestamp()) // 60].append(tick)
    groups = list(minutes.values())
    rng.shuffle(groups)
    for i in range(0, len(groups), 25):
        batch = [tick for group in groups[i : i + 25] for tick in group]
        rng.shuffle(batch)
        written = await store.write_history(batch)
        assert written.inserted == 0  # no raw ticks that old
    for batch in batches(ticks, rng):  # the same history again: every minute is already final
        assert (await store.write_history(batch)).stored == 0

    assert await db.fetchval("SELECT count(*) FROM ticks") == 0
    expected = reference(ticks, [level.seconds for level in LEVELS[1:]])
    assert await stored(db, "OLD") == {(w, "OLD", b): row for (w, _, b), row in expected.items()}


async def test_ticks_older_than_every_retention_are_counted_not_stored(
    db: asyncpg.Connection,
) -> None:
    await db.execute(queries.ENSURE_STOCKS, ["AAPL"])
    await set_retention(db, timedelta(days=2), timedelta(days=30))
    store = await TickStore.open(db, [])
    now = datetime.now(UTC)
    written = await store.write_history(
        [Tick("AAPL", now - timedelta(days=40), Decimal(1)), Tick("AAPL", now, Decimal(2))]
    )
    assert (written.inserted, written.as_bars, written.expired) == (1, 0, 1)
    assert await db.fetchval("SELECT count(*) FROM bars WHERE width_s = 86400") == 1
