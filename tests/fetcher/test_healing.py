"""Healing against the real database: the minutes with nothing stored are asked for, once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from services.common.market import Market
from services.common.models import Bar
from services.common.retention import set_retention
from services.fetcher import queries
from services.fetcher.backfill import Backfill
from services.fetcher.config import FetcherSettings
from services.fetcher.healing import Healer
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.providers.base import ProviderFatal
from services.fetcher.service import Fetcher
from services.fetcher.store import TickStore
from services.runner.embedded_db import free_port
from tests.fetcher.bar_vendor import MINUTE, Asked, BarVendor, vendor_bar
from tests.utils.vendors import sample
from tests.utils.waiting import eventually

T = TypeVar("T")
XNYS = Market("XNYS")
NOW = datetime(2026, 3, 4, 16, 0, 30, tzinfo=UTC)  # Wednesday, 11:00:30 in New York
TODAY = datetime(2026, 3, 4, 14, 30, tzinfo=UTC)  # its open


def at(hour: int, minute: int, day: int = 4) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def span(start: datetime, end: datetime) -> list[datetime]:
    return [start + MINUTE * i for i in range(int((end - start) / MINUTE))]


def make_fetcher(url: str, symbols: list[str]) -> Fetcher:
    settings = FetcherSettings(
        database_url=url,
        symbols=",".join(symbols),
        retry_wait_initial=0.01,
        retry_wait_max=0.02,
    )
    return Fetcher(settings, BarVendor(), FetcherMetrics(CollectorRegistry()))


def make_healer(fetcher: Fetcher, market: Market = XNYS, **options: object) -> Healer:
    """A healer with the fetcher's own writer, retrying call, metrics and drop log."""
    return Healer(
        fetcher.writer,
        fetcher.symbols,
        market,
        fetcher._call,
        fetcher.metrics,
        fetcher.drops,
        **options,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def writing(fetcher: Fetcher) -> AsyncIterator[None]:
    """The fetcher's single writer at work, as while it runs."""
    stop = asyncio.Event()
    task = asyncio.create_task(fetcher.writer.run(stop))
    try:
        yield
    finally:
        stop.set()
        await task
        await fetcher.writer.close()


async def store_all_but(
    db: asyncpg.Connection,
    symbols: list[str],
    since: datetime,
    until: datetime,
    holes: set[tuple[str, datetime]],
    market: Market = XNYS,
) -> None:
    """The vendor's bars of every open minute in [since, until) but the holes, as if streamed."""
    await db.execute(queries.ENSURE_STOCKS, symbols)
    store = await TickStore.open(db, symbols)
    bars = [
        vendor_bar(s, m)
        for s in symbols
        for m in market.open_minutes(since, until)
        if (s, m) not in holes
    ]
    for i in range(0, len(bars), 20_000):
        await store.write_bars(bars[i : i + 20_000])


async def stored_minutes(db: asyncpg.Connection, symbol: str) -> list[datetime]:
    rows = await db.fetch(
        "SELECT bucket FROM bars WHERE width_s = 60 AND symbol = $1 ORDER BY bucket", symbol
    )
    return [r["bucket"] for r in rows]


async def test_gaps_anywhere_are_healed_and_aligned_ones_asked_for_together(
    database_url: str, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    symbols = ["AAPL", "NVDA"]
    holes = {(s, m) for s in symbols for m in span(at(15, 0), at(15, 10))}  # both, mid-morning
    holes |= {("AAPL", m) for m in span(at(17, 0, day=3), at(17, 3, day=3))}  # yesterday
    holes |= {("NVDA", m) for m in span(at(15, 50), at(16, 0))}  # its newest minutes
    await store_all_but(db, symbols, NOW - timedelta(days=1), NOW, holes)
    fetcher = make_fetcher(database_url, symbols)
    vendor = BarVendor(hours=XNYS)
    healer = make_healer(fetcher)

    async with writing(fetcher):
        with caplog.at_level(logging.INFO):
            filled = await healer.heal_once(vendor, NOW)

    # the minute that ended 30 s ago is over, its bar published: healed too
    assert filled == 20 + 3 + 10
    assert sorted(vendor.asked, key=lambda a: a.start) == [
        Asked(("AAPL",), at(17, 0, day=3), at(17, 3, day=3)),
        Asked(("AAPL", "NVDA"), at(15, 0), at(15, 10)),
        Asked(("NVDA",), at(15, 50), at(16, 0)),
    ]
    expected = XNYS.open_minutes(NOW - timedelta(days=1), NOW)
    assert await stored_minutes(db, "AAPL") == expected
    assert await stored_minutes(db, "NVDA") == expected
    row = await db.fetchrow(
        "SELECT open, high, low, close, volume FROM bars"
        " WHERE width_s = 60 AND symbol = 'NVDA' AND bucket = $1",
        at(15, 55),
    )
    bar = vendor_bar("NVDA", at(15, 55))
    assert row is not None
    assert tuple(row) == (*map(float, (bar.open, bar.high, bar.low, bar.close)), bar.volume)
    sources = await db.fetch(
        "SELECT DISTINCT source FROM ticks WHERE ts >= $1 AND ts < $2", at(15, 0), at(15, 10)
    )
    assert [r["source"] for r in sources] == ["vendor"]
    assert sample(fetcher, "heal_gaps_total") == 4
    assert sample(fetcher, "heal_minutes_filled_total") == 33
    assert sample(fetcher, "heal_passes_total", outcome="ok") == 1
    healed = [r.__dict__ for r in caplog.records if r.getMessage() == "gap healed"]
    assert {(h["symbol"], h["from"], h["to"], h["filled"], h["source"]) for h in healed} == {
        ("AAPL", at(17, 0, day=3).isoformat(), at(17, 3, day=3).isoformat(), 3, "vendor"),
        ("AAPL", at(15, 0).isoformat(), at(15, 10).isoformat(), 10, "vendor"),
        ("NVDA", at(15, 0).isoformat(), at(15, 10).isoformat(), 10, "vendor"),
        ("NVDA", at(15, 50).isoformat(), at(16, 0).isoformat(), 10, "vendor"),
    }

    vendor.asked.clear()
    async with writing(fetcher):
        assert await healer.heal_once(vendor, NOW) == 0
    assert vendor.asked == []  # nothing left to heal
    # a minute over for less than the vendor takes to publish its bar waits for the next pass
    await db.execute(
        "DELETE FROM bars WHERE width_s = 60 AND symbol = 'AAPL' AND bucket = $1", at(16, 0)
    )
    async with writing(fetcher):
        assert await healer.heal_once(vendor, at(16, 1) + timedelta(seconds=5)) == 0
    assert vendor.asked == []


async def test_a_minute_the_vendor_has_no_bar_for_is_asked_for_once(
    database_url: str, db: asyncpg.Connection
) -> None:
    symbols = ["AAPL", "NVDA"]
    holes = {(s, m) for s in symbols for m in span(at(15, 0), at(15, 10))}
    holes |= {("NVDA", at(15, 57))}
    await store_all_but(db, symbols, NOW - timedelta(days=1), NOW, holes)
    await db.execute(  # a miss from before the lookback: forgotten
        "INSERT INTO heal_misses (symbol, minute, source) VALUES ('AAPL', $1, 'vendor')",
        NOW - timedelta(days=2),
    )
    fetcher = make_fetcher(database_url, symbols)
    # no trade on the vendor's feed in one of them, nor (yet?) in the one just ended
    vendor = BarVendor(hours=XNYS, holes={("NVDA", at(15, 5)), ("NVDA", at(15, 57))})
    healer = make_healer(fetcher)

    async with writing(fetcher):
        assert await healer.heal_once(vendor, NOW) == 19
        assert len(vendor.asked) == 2
        vendor.asked.clear()
        assert await healer.heal_once(vendor, NOW) == 0

    # The old one is remembered as missing at the source; the recent one is asked for again
    # until it is old enough that the vendor would have published it.
    assert vendor.asked == [Asked(("NVDA",), at(15, 57), at(15, 58))]
    misses = await db.fetch("SELECT symbol, minute, source FROM heal_misses")
    assert [tuple(r) for r in misses] == [("NVDA", at(15, 5), "vendor")]
    assert sample(fetcher, "heal_minutes_unavailable_total") == 1
    assert sample(fetcher, "heal_gaps_total") == 3 + 1


async def test_minutes_when_the_market_was_closed_are_never_asked_for(
    database_url: str, db: asyncpg.Connection
) -> None:
    monday = datetime(2026, 3, 2, 15, 0, 30, tzinfo=UTC)  # 10:00:30 in New York
    symbols = ["AAPL", "NVDA"]
    await db.execute(queries.ENSURE_STOCKS, symbols)
    fetcher = make_fetcher(database_url, symbols)
    vendor = BarVendor(hours=Market("XNYS", extended_hours=True))  # it trades after hours too
    healer = make_healer(fetcher, lookback=timedelta(days=3))

    async with writing(fetcher):
        await healer.heal_once(vendor, monday)

    friday = datetime(2026, 2, 27, 15, 1, tzinfo=UTC)  # three days back, to the minute
    assert vendor.asked == [
        Asked(("AAPL", "NVDA"), friday, datetime(2026, 2, 27, 21, 0, tzinfo=UTC)),
        Asked(("AAPL", "NVDA"), datetime(2026, 3, 2, 14, 30, tzinfo=UTC), at(15, 0, day=2)),
    ]
    expected = XNYS.open_minutes(friday, at(15, 0, day=2))
    assert await stored_minutes(db, "AAPL") == await stored_minutes(db, "NVDA") == expected


async def test_a_day_without_gaps_costs_no_vendor_request(
    database_url: str, db: asyncpg.Connection
) -> None:
    symbols = [f"S{n:02d}" for n in range(50)]
    await set_retention(db, timedelta(days=1), timedelta(days=3650))  # minute bars only
    await store_all_but(db, symbols, NOW - timedelta(days=1), NOW, set())
    fetcher = make_fetcher(database_url, symbols)
    vendor = BarVendor(hours=XNYS)
    async with writing(fetcher):
        assert await make_healer(fetcher).heal_once(vendor, NOW) == 0
    assert vendor.asked == []
    assert sample(fetcher, "heal_gaps_total") == 0


async def test_healing_waits_out_a_database_outage_and_a_running_backfill(
    database_url: str, db: asyncpg.Connection
) -> None:
    symbols = ["AAPL", "NVDA"]
    always = Market("24/7")
    now = datetime.now(UTC)
    await store_all_but(db, symbols, now - timedelta(minutes=20), now, set(), always)
    url = [f"postgresql://postgres@127.0.0.1:{free_port()}/x?sslmode=disable"]  # nobody there
    fetcher = make_fetcher(database_url, symbols)
    fetcher.writer.url = lambda: url[0]
    vendor = BarVendor()
    healer = make_healer(fetcher, always, lookback=timedelta(minutes=30), interval=0.05)
    backfill = Backfill(
        fetcher.writer,
        symbols,
        timedelta(hours=1),
        fetcher._call,
        fetcher.metrics,
        fetcher.drops,
        always,
    )
    backfill.idle.clear()  # as while one runs
    async with writing(fetcher):
        task = asyncio.create_task(healer.run(vendor, backfill))
        try:
            backfill.planned.set()
            await asyncio.sleep(0.2)
            assert sample(fetcher, "heal_passes_total") == 0  # not while the backfill runs
            backfill.idle.set()
            await eventually(
                lambda: sample(fetcher, "heal_passes_total", outcome="database_down") >= 3
            )
            assert not task.done()
            url[0] = database_url  # the database is back
            await eventually(lambda: sample(fetcher, "heal_minutes_filled_total") >= 2 * 9)
            assert not task.done()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    for symbol in symbols:  # the ten minutes or so before the twenty stored are filled
        stored = await stored_minutes(db, symbol)
        assert stored == span(stored[0], stored[-1] + MINUTE) and len(stored) >= 19 + 9


def test_bars_of_a_vendor_are_the_same_every_time() -> None:
    start = at(15, 0)
    assert vendor_bar("AAPL", start) == vendor_bar("AAPL", start)
    bars: list[Bar] = [vendor_bar("AAPL", start + MINUTE * i) for i in range(200)]
    assert all(b.low <= min(b.open, b.close) <= max(b.open, b.close) <= b.high for b in bars)
    assert len({b.close for b in bars}) > 50


async def test_healing_stops_when_the_history_source_refuses_its_keys(
    database_url: str, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    fetcher = make_fetcher(database_url, ["AAPL"])

    async def straight(call: str, fn: Callable[[], Awaitable[T]]) -> T | None:
        return await fn()  # as the fetcher's call passes ProviderFatal on, unretried

    healer = Healer(
        fetcher.writer,
        ["AAPL"],
        Market("24/7"),
        straight,
        fetcher.metrics,
        fetcher.drops,
        interval=0.01,
    )
    vendor = BarVendor(errors=[ProviderFatal("unauthorized", "keys refused")])
    async with writing(fetcher):
        with caplog.at_level(logging.ERROR):
            await asyncio.wait_for(healer.run(vendor), 10)  # returns: it does not raise
    assert len(vendor.asked) == 1
    assert "healing stopped: the history source refused us" in caplog.text
    assert sample(fetcher, "heal_passes_total", outcome="failed") == 1
