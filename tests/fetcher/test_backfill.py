"""History backfill into the real database: vendor minute bars, recent day first, stored once."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from operator import attrgetter

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from services.common.market import Market
from services.common.models import Bar, Tick
from services.fetcher.backfill import CHUNK_BARS, REQUEST_BARS, REQUEST_SPAN, Backfill, day_chunks
from services.fetcher.config import FetcherSettings
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.providers.base import Provider, ProviderError
from services.fetcher.service import Fetcher
from tests.fetcher.bar_vendor import MINUTE, Asked, BarVendor
from tests.fetcher.notifications import Notifications
from tests.fetcher.scripted import ScriptedProvider
from tests.utils.api import Market as Stored
from tests.utils.vendors import sample
from tests.utils.waiting import eventually

XNYS = Market("XNYS")
WEDNESDAY = datetime(2026, 3, 4, 15, 0, 30, tzinfo=UTC)  # 10:00:30 in New York


def make_fetcher(url: str, provider: Provider, **overrides: object) -> Fetcher:
    values: dict[str, object] = {
        "database_url": url,
        "symbols": "AAPL,NVDA",
        "backfill": "2h",
        "price_interval": 0.05,
        "retry_wait_initial": 0.01,
        "retry_wait_max": 0.02,
        **overrides,
    }
    settings = FetcherSettings(**values)  # type: ignore[arg-type]
    return Fetcher(settings, provider, FetcherMetrics(CollectorRegistry()))


def backfill_for(fetcher: Fetcher, market: Market, window: timedelta) -> Backfill:
    """A backfill with the fetcher's own writer, retrying call and metrics, over `market`."""
    return Backfill(
        fetcher.writer,
        fetcher.symbols,
        window,
        fetcher._call,
        fetcher.metrics,
        fetcher.drops,
        market,
    )


async def backfill_once(fetcher: Fetcher, until: datetime, backfill: Backfill | None = None) -> int:
    """Run one backfill with the fetcher's own single writer, as `run()` does."""
    stop = asyncio.Event()
    writer = asyncio.create_task(fetcher.writer.run(stop))
    try:
        return await (backfill or fetcher.backfill).run(fetcher.provider, until)
    finally:
        stop.set()
        await writer
        await fetcher.writer.close()


async def minutes(db: asyncpg.Connection, symbol: str) -> list[datetime]:
    rows = await db.fetch(
        "SELECT bucket FROM bars WHERE width_s = 60 AND symbol = $1 ORDER BY bucket", symbol
    )
    return [r["bucket"] for r in rows]


async def test_the_last_session_of_every_symbol_comes_first_and_only_open_hours_are_asked(
    database_url: str, db: asyncpg.Connection, notes: Notifications
) -> None:
    # The vendor also serves pre- and after-market bars: they are not the market's hours here.
    vendor = BarVendor(hours=Market("XNYS", extended_hours=True))
    fetcher = make_fetcher(database_url, vendor)
    week = timedelta(days=7)
    stored = await backfill_once(fetcher, WEDNESDAY, backfill_for(fetcher, XNYS, week))

    today = datetime(2026, 3, 4, 14, 30, tzinfo=UTC)
    assert vendor.asked[0] == Asked(("AAPL", "NVDA"), today, today + 30 * MINUTE)
    # then the rest in one request for both symbols (well inside one request's budget), from the
    # first open minute of the window to the last close before today
    assert vendor.asked[1:] == [
        Asked(
            ("AAPL", "NVDA"),
            datetime(2026, 2, 25, 15, 1, tzinfo=UTC),
            datetime(2026, 3, 3, 21, 0, tzinfo=UTC),
        )
    ]
    expected = XNYS.open_minutes(WEDNESDAY - week, WEDNESDAY.replace(second=0))
    assert await minutes(db, "AAPL") == await minutes(db, "NVDA") == expected
    assert stored == 2 * len(expected)
    assert sample(fetcher, "bars_stored_total") == stored
    assert sample(fetcher, "bars_dropped_total", reason="outside_request") > 0  # after hours
    assert await db.fetchval("SELECT bool_and(backfilled) FROM ticks") is True
    assert await db.fetchval("SELECT count(DISTINCT source) FROM ticks") == 1
    assert await db.fetchval("SELECT min(source) FROM ticks") == "vendor"
    received = await notes.drain()
    assert {channel for channel, _ in received} == {"history"}  # never as live prices
    first = json.loads(received[0][1])  # the last session is announced first
    assert first["start"] == int(today.timestamp() * 1000)

    vendor.asked.clear()
    again = backfill_for(fetcher, XNYS, week)
    assert await backfill_once(fetcher, WEDNESDAY, again) == 0
    assert vendor.asked == []  # nothing missing: nothing asked for


def test_long_histories_are_asked_for_in_bounded_requests_newest_first() -> None:
    writer_less = Backfill(
        None,  # type: ignore[arg-type]  # planning needs no database
        ["A", "B", "C", "D", "E", "F"],
        timedelta(days=90),
        None,  # type: ignore[arg-type]
        FetcherMetrics(CollectorRegistry()),
        None,  # type: ignore[arg-type]
        XNYS,
    )
    since = WEDNESDAY - timedelta(days=90)
    requests = writer_less.plan([(s, since) for s in writer_less.symbols], WEDNESDAY)
    assert len(requests) > 3
    assert requests[0].start == datetime(2026, 3, 4, 14, 30, tzinfo=UTC)
    ends = [r.end for r in requests[1:]]
    assert ends == sorted(ends, reverse=True)
    for older, newer in zip(requests[2:], requests[1:], strict=False):
        assert older.end <= newer.start  # no minute asked twice
    for request in requests:
        assert len(request.symbols) == 6
        assert len(request.symbols) * len(XNYS.open_minutes(request.start, request.end)) <= (
            REQUEST_BARS
        )
        assert request.end - request.start <= REQUEST_SPAN
        assert XNYS.is_open(request.start) and XNYS.is_open(request.end - MINUTE)
    asked = sorted(m for r in requests for m in XNYS.open_minutes(r.start, r.end))
    assert asked == XNYS.open_minutes(since, WEDNESDAY.replace(second=0))


async def test_after_downtime_only_the_gap_is_filled(
    database_url: str, db: asyncpg.Connection
) -> None:
    until = datetime.now(UTC).replace(second=30, microsecond=0)
    last_live = until - timedelta(minutes=30)
    await Stored(db).stocks("AAPL")
    await Stored(db).ticks([("AAPL", last_live, 1)])
    vendor = BarVendor(name="simulated")  # round the clock, like the simulator
    await backfill_once(make_fetcher(database_url, vendor), until)
    aapl = await minutes(db, "AAPL")
    assert aapl[0] == last_live.replace(second=0) and aapl[1] == aapl[0] + MINUTE
    assert len(aapl) == 30 and aapl[-1] == until.replace(second=0) - MINUTE
    assert len(await minutes(db, "NVDA")) == 119  # the whole minutes of the last two hours
    assert sorted(len(a.symbols) for a in vendor.asked) == [1, 1]  # gaps starting apart


async def test_live_ticks_are_not_held_up_by_days_of_history(
    database_url: str, db: asyncpg.Connection, notes: Notifications
) -> None:
    fetcher = make_fetcher(database_url, BarVendor(name="simulated"), backfill="3d")
    task = asyncio.create_task(fetcher.run())
    try:
        await eventually(lambda: sample(fetcher, "bars_stored_total") >= 2 * 3 * 24 * 60 - 2)
    finally:
        fetcher.stop()
        await asyncio.wait_for(task, 10)
    first_live = await db.fetchval("SELECT min(event_id) FROM ticks WHERE NOT backfilled")
    last_history = await db.fetchval("SELECT max(event_id) FROM ticks WHERE backfilled")
    assert first_live < last_history  # live batches were written between history chunks
    newest_history = await db.fetchval("SELECT max(ts) FROM ticks WHERE backfilled")
    oldest_live = await db.fetchval("SELECT min(ts) FROM ticks WHERE NOT backfilled")
    assert newest_history < oldest_live  # history ends where the live ticks begin
    for channel, payload in await notes.drain():
        if channel == "prices":  # every announced id belongs to a live tick
            row = await db.fetchval(
                "SELECT backfilled FROM ticks WHERE event_id = $1", int(payload)
            )
            assert row is False


def test_history_is_written_in_chunks_of_whole_symbol_days() -> None:
    # Three 24/7 days of six symbols, shuffled: each symbol's day (1,440 bars) is one chunk, so
    # a live batch waits behind a symbol's day at most, not behind every symbol's.
    symbols = ["AAPL", "AMZN", "GE", "INTC", "NFLX", "NVDA"]
    start = datetime(2026, 3, 2, tzinfo=UTC)
    price = Decimal("1")
    bars = [
        Bar(s, start + MINUTE * m, price, price, price, price)
        for m in range(3 * 24 * 60)
        for s in symbols
    ]
    random.Random(7).shuffle(bars)
    chunks = list(day_chunks(bars))
    key = attrgetter("symbol", "start")
    assert sorted((b for c in chunks for b in c), key=key) == sorted(bars, key=key)
    assert [len(c) for c in chunks] == [24 * 60] * (3 * len(symbols))
    assert all(len({(b.symbol, b.start.date()) for b in c}) == 1 for c in chunks)
    days = [c[0].start.date() for c in chunks]
    assert days == sorted(days)  # oldest day first
    # New York's days (390 minutes) are grouped up to about CHUNK_BARS
    short = [b for b in bars if b.start.hour < 6 or (b.start.hour == 6 and b.start.minute < 30)]
    grouped = list(day_chunks(short))
    assert all(len(c) < CHUNK_BARS + 390 for c in grouped)
    assert max(len({(b.symbol, b.start.date()) for b in c}) for c in grouped) == 3


async def test_a_failing_history_call_skips_that_request_only(
    database_url: str, db: asyncpg.Connection
) -> None:
    busy = ProviderError("http_5xx", "busy")
    vendor = BarVendor(hours=XNYS, errors=[busy] * 3)  # every attempt at the first request
    fetcher = make_fetcher(database_url, vendor)
    await backfill_once(fetcher, WEDNESDAY, backfill_for(fetcher, XNYS, timedelta(days=2)))
    stored = await minutes(db, "AAPL")
    assert stored and max(stored) < datetime(2026, 3, 4, tzinfo=UTC)  # today's request failed
    assert sample(fetcher, "rounds_skipped_total", call="history") == 1
    assert len(vendor.asked) == 3 + 1


async def test_a_provider_without_history_is_said_once(
    database_url: str, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    fetcher = make_fetcher(database_url, ScriptedProvider(), backfill="7d")
    with caplog.at_level(logging.INFO):
        assert await backfill_once(fetcher, datetime.now(UTC)) == 0
    assert caplog.text.count("no history backfill") == 1
    assert await db.fetchval("SELECT count(*) FROM bars") == 0
    assert fetcher.backfill.planned.is_set() and fetcher.backfill.idle.is_set()


class StaleVendor(BarVendor):
    """After hours the first quote carries the last trade's time, well before the start."""

    async def quotes(self, symbols: list[str]) -> list[Tick]:  # type: ignore[override]
        # (not on a second the vendor's bars are drawn at, so it never meets one of them)
        stale = datetime.now(UTC).replace(second=7, microsecond=0) - timedelta(minutes=10)
        return [Tick(s, stale, Decimal("100")) for s in symbols]


async def test_a_stale_first_quote_does_not_shrink_the_backfill(
    database_url: str, db: asyncpg.Connection
) -> None:
    fetcher = make_fetcher(database_url, StaleVendor(name="simulated"), backfill="1h")
    task = asyncio.create_task(fetcher.run())
    try:
        # every whole minute of the hour but the stale quote's own (a minute stored is final)
        await eventually(lambda: sample(fetcher, "bars_stored_total") >= 2 * 58)
    finally:
        fetcher.stop()
        await asyncio.wait_for(task, 10)
    oldest = await db.fetchval("SELECT min(ts) FROM ticks WHERE backfilled")
    assert oldest < datetime.now(UTC) - timedelta(minutes=55)
    live = await db.fetchval("SELECT count(*) FROM ticks WHERE NOT backfilled")
    assert live == 2  # the stale quote, once per symbol
