"""History backfill into the real database: stored once, as history, never announced as prices."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from services.fetcher.config import FetcherSettings
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.providers.simulated import SimulatedProvider
from services.fetcher.service import Fetcher
from tests.fakes.finnhub import FakeFinnhub
from tests.fakes.server import Fault
from tests.fakes.twelvedata import FakeTwelveData
from tests.fetcher.notifications import Notifications
from tests.utils.api import Market
from tests.utils.vendors import finnhub_settings, make_fetcher, sample, twelvedata_settings
from tests.utils.waiting import eventually


def sim_fetcher(url: str, **overrides: object) -> Fetcher:
    values: dict[str, object] = {
        "database_url": url,
        "symbols": "AAPL,NVDA",
        "backfill": "2h",
        "price_interval": 0.05,
        **overrides,
    }
    settings = FetcherSettings(**values)  # type: ignore[arg-type]
    return Fetcher(settings, SimulatedProvider(seed=5), FetcherMetrics(CollectorRegistry()))


async def backfill_once(fetcher: Fetcher, until: datetime) -> int:
    """Run one backfill with the fetcher's own single writer, as `run()` does."""
    stop = asyncio.Event()
    writer = asyncio.create_task(fetcher.writer.run(stop))
    try:
        return await fetcher.backfill.run(fetcher.provider, until)
    finally:
        stop.set()
        await writer
        await fetcher.writer.close()
        await fetcher.provider.aclose()


async def test_simulated_history_is_reproducible_and_ends_at_the_start_price() -> None:
    end = datetime(2026, 3, 2, 15, 30, 20, tzinfo=UTC)
    start = end - timedelta(hours=2)
    one = await SimulatedProvider(seed=3).history("AAPL", start, end)
    assert one == await SimulatedProvider(seed=3).history("AAPL", start, end)
    assert one != await SimulatedProvider(seed=4).history("AAPL", start, end)
    assert len(one) == 120
    assert all(t.ts.second == 0 and start <= t.ts < end for t in one)
    assert all(b.ts - a.ts == timedelta(minutes=1) for a, b in zip(one, one[1:], strict=False))
    assert one[-1].price == Decimal("270.00")  # where the live simulated path starts
    week = await SimulatedProvider().history("AAPL", end - timedelta(days=7), end)
    assert len(week) == 7 * 24 * 60  # one point a minute, not one a second


async def test_backfill_is_stored_as_history_and_announced_once(
    database_url: str, db: asyncpg.Connection, notes: Notifications
) -> None:
    fetcher = sim_fetcher(database_url)
    until = datetime.now(UTC)
    assert await backfill_once(fetcher, until) == 240
    rows = await db.fetch("SELECT symbol, ts, backfilled FROM ticks ORDER BY ts")
    assert len(rows) == 240 and all(r["backfilled"] for r in rows)
    assert sample(fetcher, "ticks_backfilled_total") == 240
    received = await notes.drain()
    assert {channel for channel, _ in received} == {"history"}  # never as live prices
    windows = [json.loads(payload) for _, payload in received]
    assert {s for w in windows for s in w["symbols"]} == {"AAPL", "NVDA"}
    assert min(w["start"] for w in windows) == int(rows[0]["ts"].timestamp() * 1000)
    assert max(w["end"] for w in windows) == int(rows[-1]["ts"].timestamp() * 1000)

    again = sim_fetcher(database_url)
    assert await backfill_once(again, until) == 0  # nothing missing: nothing asked for
    chunk = await SimulatedProvider(seed=5).history("AAPL", until - timedelta(hours=2), until)
    stop = asyncio.Event()
    writer = asyncio.create_task(again.writer.run(stop))
    assert await again.writer.submit_history(chunk) == 0  # and the same ticks are stored once
    stop.set()
    await writer
    await again.writer.close()
    assert await db.fetchval("SELECT count(*) FROM ticks") == 240
    assert await notes.drain() == []


async def test_after_downtime_only_the_gap_is_filled(
    database_url: str, db: asyncpg.Connection
) -> None:
    until = datetime.now(UTC).replace(second=30)
    last_live = until - timedelta(minutes=30)
    await Market(db).stocks("AAPL")
    await Market(db).ticks([("AAPL", last_live, 1)])
    await backfill_once(sim_fetcher(database_url), until)
    aapl = await db.fetch("SELECT ts FROM ticks WHERE symbol = 'AAPL' AND backfilled")
    assert len(aapl) == 30 and min(r["ts"] for r in aapl) > last_live
    assert await db.fetchval("SELECT count(*) FROM ticks WHERE symbol = 'NVDA'") == 120


async def test_live_ticks_are_not_held_up_by_a_week_of_history(
    database_url: str, db: asyncpg.Connection, notes: Notifications
) -> None:
    fetcher = sim_fetcher(database_url, backfill="7d", batch_size=2000)
    task = asyncio.create_task(fetcher.run())
    try:
        await eventually(lambda: sample(fetcher, "ticks_backfilled_total") == 2 * 7 * 24 * 60)
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


async def test_twelve_data_history_comes_from_time_series(
    database_url: str, db: asyncpg.Connection, twelvedata: FakeTwelveData
) -> None:
    until = datetime.now(UTC)
    fetcher = make_fetcher(twelvedata_settings(database_url, twelvedata, backfill="3h"))
    stored = await backfill_once(fetcher, until)
    assert 2 * 179 <= stored <= 2 * 180
    call = twelvedata.http.calls("/time_series")[0]
    assert (call.params["interval"], call.params["timezone"]) == ("1min", "UTC")
    assert await db.fetchval("SELECT bool_and(backfilled) FROM ticks") is True
    again = make_fetcher(twelvedata_settings(database_url, twelvedata, backfill="3h"))
    assert await backfill_once(again, until) == 0


async def test_a_failing_history_call_skips_that_symbol_only(
    database_url: str, db: asyncpg.Connection, twelvedata: FakeTwelveData
) -> None:
    twelvedata.http.script("/time_series", *[Fault(503, "busy")] * 3)
    fetcher = make_fetcher(twelvedata_settings(database_url, twelvedata, backfill="1h"))
    await backfill_once(fetcher, datetime.now(UTC))
    symbols = await db.fetch("SELECT DISTINCT symbol FROM ticks")
    assert [r["symbol"] for r in symbols] == ["NVDA"]
    assert sample(fetcher, "rounds_skipped_total", call="history") == 1


async def test_finnhub_says_its_free_tier_has_no_history(
    database_url: str,
    db: asyncpg.Connection,
    finnhub: FakeFinnhub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fetcher = make_fetcher(finnhub_settings(database_url, finnhub, backfill="7d"))
    with caplog.at_level(logging.INFO):
        assert await backfill_once(fetcher, datetime.now(UTC)) == 0
    assert "no candles" in caplog.text
    assert await db.fetchval("SELECT count(*) FROM ticks") == 0


async def test_a_stale_first_quote_does_not_shrink_the_backfill(
    database_url: str, db: asyncpg.Connection, twelvedata: FakeTwelveData
) -> None:
    # After hours the first quote carries the last bar's time, well before the fetcher started;
    # it must not be taken for history that is already stored.
    from tests.fakes.server import fixture

    stale = int(datetime.now(UTC).timestamp()) // 60 * 60 - 600
    quotes = {
        s: {**fixture("twelvedata/quote.json"), "symbol": s, "timestamp": stale}
        for s in ("AAPL", "NVDA")
    }
    twelvedata.http.script("/quote", *[Fault.json(quotes)] * 50)
    fetcher = make_fetcher(twelvedata_settings(database_url, twelvedata, backfill="1h"))
    task = asyncio.create_task(fetcher.run())
    try:
        await eventually(lambda: sample(fetcher, "ticks_backfilled_total") >= 2 * 59)
    finally:
        fetcher.stop()
        await asyncio.wait_for(task, 10)
    oldest = await db.fetchval("SELECT min(ts) FROM ticks WHERE backfilled")
    assert oldest < datetime.now(UTC) - timedelta(minutes=55)
    live = await db.fetchval("SELECT count(*) FROM ticks WHERE NOT backfilled")
    assert live == 2  # the stale quote, once per symbol
