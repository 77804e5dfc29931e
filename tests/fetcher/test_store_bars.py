"""Vendor minute bars and tick sources in the real database: what is stored at every level."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from services.common.bars import LEVELS
from services.common.models import Bar, Tick
from services.common.retention import set_retention
from services.fetcher import queries
from services.fetcher.store import TickStore
from tests.fetcher.bar_vendor import MINUTE, vendor_bar
from tests.fetcher.notifications import Notifications

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
RECENT = NOW - timedelta(days=1, hours=3)  # inside the raw retention (2 days here)
OLD = NOW - timedelta(days=10, hours=5)  # minute bars only
BarRow = tuple[object, ...]


def bars(symbol: str, start: datetime, count: int) -> list[Bar]:
    return [vendor_bar(symbol, start + MINUTE * i) for i in range(count)]


async def open_store(db: asyncpg.Connection, symbols: list[str]) -> TickStore:
    await set_retention(db, timedelta(days=2), timedelta(days=30))
    await db.execute(queries.ENSURE_STOCKS, symbols)
    return await TickStore.open(db, symbols)


def expected_levels(given: list[Bar]) -> dict[tuple[int, str, datetime], BarRow]:
    """Every level from 1 minute up, computed straight from the vendor's bars."""
    groups: dict[tuple[int, str, datetime], list[Bar]] = defaultdict(list)
    for level in LEVELS[1:]:
        for bar in given:
            seconds = int(bar.start.timestamp()) // level.seconds * level.seconds
            groups[(level.seconds, bar.symbol, datetime.fromtimestamp(seconds, UTC))].append(bar)
    result: dict[tuple[int, str, datetime], BarRow] = {}
    for key, members in groups.items():
        members.sort(key=lambda b: b.start)
        result[key] = (
            float(members[0].open),
            float(max(b.high for b in members)),
            float(min(b.low for b in members)),
            float(members[-1].close),
            sum(b.volume or 0 for b in members),
        )
    return result


async def stored_levels(db: asyncpg.Connection) -> dict[tuple[int, str, datetime], BarRow]:
    rows = await db.fetch(
        "SELECT width_s, symbol, bucket, open, high, low, close, volume FROM bars"
        " WHERE width_s >= 60"
    )
    return {(r[0], r[1], r[2]): tuple(r.values())[3:] for r in rows}


async def test_vendor_bars_keep_their_ohlc_and_volume_at_every_level(
    db: asyncpg.Connection, notes: Notifications
) -> None:
    store = await open_store(db, ["AAPL", "NVDA"])
    recent = bars("AAPL", RECENT, 150) + bars("NVDA", RECENT + MINUTE * 7, 40)
    old = bars("AAPL", OLD, 90)
    given = [replace(b, source="alpaca") for b in recent + old]

    written = await store.write_bars(given)

    assert (written.bars, written.expired) == (len(given), 0)
    assert await stored_levels(db) == expected_levels(given)
    # inside the raw retention the minutes are drawn as backfilled ticks of the vendor's prices
    ticks = await db.fetch("SELECT symbol, ts, price, volume, source, backfilled FROM ticks")
    assert {t["symbol"] for t in ticks} == {"AAPL", "NVDA"}
    assert min(t["ts"] for t in ticks) == RECENT  # nothing from the old bars
    assert all(t["backfilled"] and t["source"] == "alpaca" for t in ticks)
    assert written.ticks == len(ticks) and len(recent) <= len(ticks) <= 4 * len(recent)
    for bar in recent:
        mine = sorted(
            (
                t
                for t in ticks
                if t["symbol"] == bar.symbol and bar.start <= t["ts"] < bar.start + MINUTE
            ),
            key=lambda t: t["ts"],
        )
        prices = [t["price"] for t in mine]
        assert (prices[0], max(prices), min(prices), prices[-1]) == (
            float(bar.open),
            float(bar.high),
            float(bar.low),
            float(bar.close),
        )
        assert sum(t["volume"] or 0 for t in mine) == bar.volume
    # the 10 s bars and the minute bars are exactly those of the stored ticks
    for width in (10, 60):
        rows = await db.fetch(
            "SELECT symbol, bucket, open, high, low, close, ticks, open_ts, high_ts, low_ts,"
            " close_ts FROM bars WHERE width_s = $1 AND bucket >= $2",
            width,
            RECENT,
        )
        assert {(r[0], r[1]): tuple(r.values())[2:] for r in rows} == of_ticks(ticks, width)
    history = [json.loads(p) for c, p in await notes.drain() if c == "history"]
    assert history == [
        {
            "symbols": ["AAPL", "NVDA"],
            "start": int(OLD.timestamp() * 1000),
            "end": int((RECENT + MINUTE * 149 + timedelta(seconds=59)).timestamp() * 1000),
        }
    ]


async def test_a_stored_minute_is_final(db: asyncpg.Connection, notes: Notifications) -> None:
    store = await open_store(db, ["AAPL"])
    first = bars("AAPL", RECENT, 30)
    await store.write_bars(first[10:20])
    levels = await stored_levels(db)
    ticks = await db.fetchval("SELECT count(*) FROM ticks")
    await notes.drain()

    again = await store.write_bars(first[10:20])  # the same minutes again
    assert (again.bars, again.ticks) == (0, 0)
    assert await notes.drain() == []  # nothing new: nothing announced
    changed = [Bar("AAPL", b.start, Decimal(1), Decimal(2), Decimal(1), Decimal(2)) for b in first]
    assert (await store.write_bars(changed)).bars == 20  # only the minutes not stored yet
    assert (
        await db.fetchval(
            "SELECT count(*) FROM ticks WHERE ts >= $1 AND ts < $2",
            first[10].start,
            first[20].start,
        )
        == ticks
    )
    now_stored = await stored_levels(db)
    assert {k: v for k, v in now_stored.items() if k[0] == 60 and k in levels} == {
        k: v for k, v in levels.items() if k[0] == 60
    }


async def test_bars_older_than_every_retention_are_counted_not_stored(
    db: asyncpg.Connection,
) -> None:
    store = await open_store(db, ["AAPL"])
    written = await store.write_bars(
        bars("AAPL", NOW - timedelta(days=40), 5) + bars("AAPL", OLD, 3)
    )
    assert (written.bars, written.expired) == (3, 5)
    assert await db.fetchval("SELECT count(*) FROM bars WHERE width_s = 60") == 3


async def test_live_ticks_keep_their_source_and_a_new_source_is_announced(
    db: asyncpg.Connection, notes: Notifications
) -> None:
    store = await open_store(db, ["AAPL", "NVDA"])
    t = NOW - timedelta(minutes=30)

    def live(source: str, *seconds: int, symbol: str = "AAPL") -> list[Tick]:
        return [
            Tick(symbol, t + timedelta(seconds=s), Decimal(100 + s), 5, source) for s in seconds
        ]

    await store.write_live(live("alpaca", 1, 2))  # copied in
    assert await notes.drain() == [("prices", _id(await _max_id(db))), ("stocks", "AAPL")]
    await store.write_live(live("alpaca", 3) + live("alpaca", 4, symbol="NVDA"))
    assert [n for n in await notes.drain() if n[0] == "stocks"] == [("stocks", "NVDA")]
    await store.write_live(live("finnhub", 0))  # late: the statement path; the feed failed over
    assert [n for n in await notes.drain() if n[0] == "stocks"] == [("stocks", "AAPL")]
    await store.write_live(live("finnhub", 5, 6))
    assert [n for n in await notes.drain() if n[0] == "stocks"] == []
    rows = await db.fetch("SELECT symbol, source FROM ticks ORDER BY symbol, ts")
    assert [tuple(r) for r in rows] == [
        ("AAPL", "finnhub"),
        ("AAPL", "alpaca"),
        ("AAPL", "alpaca"),
        ("AAPL", "alpaca"),
        ("AAPL", "finnhub"),
        ("AAPL", "finnhub"),
        ("NVDA", "alpaca"),
    ]
    # a new connection knows each symbol's source from the newest stored tick
    reopened = await TickStore.open(db, ["AAPL", "NVDA"])
    await reopened.write_live(live("finnhub", 7) + live("alpaca", 8, symbol="NVDA"))
    assert [n for n in await notes.drain() if n[0] == "stocks"] == []


def of_ticks(ticks: list[asyncpg.Record], width: int) -> dict[tuple[str, datetime], BarRow]:
    groups: dict[tuple[str, datetime], list[tuple[datetime, float]]] = defaultdict(list)
    for t in ticks:
        seconds = int(t["ts"].timestamp()) // width * width
        groups[(t["symbol"], datetime.fromtimestamp(seconds, UTC))].append((t["ts"], t["price"]))
    result: dict[tuple[str, datetime], BarRow] = {}
    for key, points in groups.items():
        points.sort()
        high = max(p for _, p in points)
        low = min(p for _, p in points)
        result[key] = (
            points[0][1],
            high,
            low,
            points[-1][1],
            len(points),
            points[0][0],
            min(ts for ts, p in points if p == high),
            min(ts for ts, p in points if p == low),
            points[-1][0],
        )
    return result


async def _max_id(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT max(event_id) FROM ticks"))


def _id(value: int) -> str:
    return str(value)
