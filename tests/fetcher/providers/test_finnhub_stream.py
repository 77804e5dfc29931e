"""Finnhub's trade WebSocket (a loopback fake): trades, drops, reconnects, REST fallback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.common.models import Tick
from services.fetcher.providers.finnhub_stream import FinnhubStream, collapse
from services.fetcher.service import Fetcher
from services.runner.embedded_db import free_port
from services.runner.processes import ServiceProcess
from tests.fakes.finnhub import FakeFinnhub, settings_env
from tests.fakes.server import fixture
from tests.utils.vendors import finnhub_settings, make_fetcher, sample
from tests.utils.waiting import eventually


async def count(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM ticks"))


@pytest.fixture
async def running(database_url: str, finnhub: FakeFinnhub) -> AsyncIterator[Fetcher]:
    fetcher = make_fetcher(finnhub_settings(database_url, finnhub, finnhub_stream=True))
    task = asyncio.create_task(fetcher.run())
    yield fetcher
    fetcher.stop()
    await asyncio.wait_for(task, 10)


async def test_trades_are_written_and_rest_is_not_polled_while_streaming(
    running: Fetcher, finnhub: FakeFinnhub, db: asyncpg.Connection
) -> None:
    await eventually(lambda: running.stream is not None and running.stream.connected)
    await eventually(lambda: count(db), message="no ticks")
    # one /quote per symbol at start (plus any round before the socket was up), then none
    polled = len(finnhub.http.calls("/api/v1/quote"))
    assert polled >= 2
    before = await count(db)
    await asyncio.sleep(0.6)  # a dozen price intervals
    assert len(finnhub.http.calls("/api/v1/quote")) == polled
    assert await count(db) > before + 10  # trades kept coming
    assert finnhub.subscriptions == [["AAPL", "NVDA"]]
    # trade times are milliseconds, as the vendor sends them
    fractional = await db.fetchval(
        "SELECT count(*) FROM ticks WHERE extract(milliseconds FROM ts)::int % 1000 <> 0"
    )
    assert fractional > 0
    assert sample(running, "stream_connected") == 1


async def test_a_dropped_socket_reconnects_resubscribes_and_rest_fills_the_gap(
    running: Fetcher, finnhub: FakeFinnhub, db: asyncpg.Connection
) -> None:
    await eventually(lambda: finnhub.trades_sent > 10)
    finnhub.ws_down = True  # refuse new sockets for a while
    await finnhub.drop_connections()
    await eventually(lambda: running.stream is not None and not running.stream.connected)
    polled = len(finnhub.http.calls("/api/v1/quote"))
    await eventually(
        lambda: len(finnhub.http.calls("/api/v1/quote")) >= polled + 6,
        message="REST not polled while the socket is down",
    )
    assert sample(running, "stream_connected") == 0

    finnhub.ws_down = False
    stream = running.stream
    assert stream is not None
    await eventually(lambda: finnhub.ws_connects >= 2 and stream.connected, timeout=5)
    await eventually(lambda: len(finnhub.subscriptions[-1]) == 2)
    assert finnhub.subscriptions[-1] == ["AAPL", "NVDA"]  # re-subscribed
    await asyncio.sleep(0.2)
    polled = len(finnhub.http.calls("/api/v1/quote"))
    sent = finnhub.trades_sent
    await asyncio.sleep(0.5)
    assert len(finnhub.http.calls("/api/v1/quote")) == polled  # streaming again
    assert finnhub.trades_sent > sent
    last_ts = await db.fetchval("SELECT max(ts) FROM ticks")
    await eventually(lambda: _newer(db, last_ts), message="no ticks after the reconnect")


async def test_an_unexpected_error_reconnects_instead_of_ending_the_stream(
    finnhub: FakeFinnhub,
) -> None:
    stream = FinnhubStream(
        finnhub.ws_url, finnhub.key, ["AAPL"], lambda *_: None, reconnect_initial=0.01
    )
    delivered: list[Tick] = []
    failed: list[bool] = []

    def sink(ticks: list[Tick]) -> None:
        if not failed:
            failed.append(True)
            raise RuntimeError("a bug in whatever consumes the trades")
        delivered.extend(ticks)

    task = asyncio.create_task(stream.run(sink))
    try:
        await eventually(lambda: len(delivered) > 3, message="the stream ended after an error")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert finnhub.ws_connects == 2


async def _newer(db: asyncpg.Connection, ts: object) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM ticks WHERE ts > $1", ts))


def test_messages_become_ticks_pings_are_ignored_junk_is_counted() -> None:
    drops: Counter[str] = Counter()
    stream = FinnhubStream(
        "ws://x", "unit-test-key-1", ["AAPL"], lambda kind, _d: drops.update([kind])
    )
    [tick] = stream.parse(json.dumps(fixture("finnhub/ws_trade.json")))
    assert (tick.symbol, str(tick.price), tick.volume) == ("BINANCE:BTCUSDT", "7296.89", 0)
    assert tick.ts.timestamp() == 1575526691.134
    assert stream.parse(json.dumps(fixture("finnhub/ws_ping.json"))) == []
    assert stream.parse("<html>") == []
    assert stream.parse('{"type": "trade", "data": [{"s": "AAPL", "p": "1.5", "t": 1}]}') == []
    assert stream.parse('{"type": "error", "msg": "Subscribing to too many symbols"}') == []
    assert stream.parse('{"type": "news"}') == []
    # a time past what a datetime holds, or an infinite volume: dropped, never a crash
    trade = '{"type": "trade", "data": [{"s": "AAPL", "p": 1.5, %s}]}'
    assert stream.parse(trade % '"t": 100000000000000000000') == []
    assert stream.parse(trade % '"t": 1, "v": Infinity') == []
    assert drops == {"malformed_json": 1, "invalid_fields": 4, "vendor_error": 1}


def test_trades_in_the_same_millisecond_become_one_tick() -> None:
    stream = FinnhubStream("ws://x", "unit-test-key-1", ["AAPL"], lambda *_: None)
    message = {
        "type": "trade",
        "data": [
            {"s": "AAPL", "p": 10.0, "t": 1_700_000_000_000, "v": 5},
            {"s": "AAPL", "p": 10.5, "t": 1_700_000_000_000, "v": 7},
            {"s": "AAPL", "p": 11.0, "t": 1_700_000_000_001, "v": 1},
        ],
    }
    ticks = stream.parse(json.dumps(message))
    assert [(str(t.price), t.volume) for t in ticks] == [("10.5", 12), ("11.0", 1)]
    assert collapse([]) == []


async def test_the_key_never_appears_in_logs(
    database_url: str, finnhub: FakeFinnhub, caplog: pytest.LogCaptureFixture
) -> None:
    settings = finnhub_settings(database_url, finnhub, finnhub_stream=True, log_level="DEBUG")
    assert finnhub.key not in repr(settings) and finnhub.key not in str(settings)
    fetcher = make_fetcher(settings)
    with caplog.at_level(logging.DEBUG):
        task = asyncio.create_task(fetcher.run())
        await eventually(lambda: finnhub.trades_sent > 5)
        await finnhub.drop_connections()  # the reconnect logs the URL again
        await eventually(lambda: finnhub.ws_connects >= 2)
        fetcher.stop()
        await asyncio.wait_for(task, 10)
    assert any("websockets" in r.name or "socket" in r.name for r in caplog.records)
    assert "trade stream connected" in caplog.text
    assert finnhub.key not in caplog.text


async def test_the_fetcher_process_streams_real_trades(
    database_url: str, finnhub: FakeFinnhub, db: asyncpg.Connection
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "STOCKSTREAMER_FETCHER_METRICS_PORT": str(free_port()),
        "STOCKSTREAMER_SYMBOLS": "AAPL,NVDA,MSFT",
        "STOCKSTREAMER_LOG_LEVEL": "DEBUG",
        "STOCKSTREAMER_CALENDAR": "24/7",  # the fake trades around the clock
        **settings_env(finnhub),
    }
    with ServiceProcess("services.fetcher", env) as proc:
        await eventually(lambda: _symbols_with_trades(db), timeout=15)
        assert proc.stop() == 0
    assert "trade stream connected" in proc.output
    assert "no history source" in proc.output  # Finnhub's free tier has no history to backfill
    assert finnhub.key not in proc.output
    assert finnhub.subscriptions[0] == ["AAPL", "NVDA", "MSFT"]


async def _symbols_with_trades(db: asyncpg.Connection) -> bool:
    rows = await db.fetch(
        "SELECT symbol FROM ticks WHERE extract(milliseconds FROM ts)::int % 1000 <> 0"
        " GROUP BY symbol HAVING count(*) > 3"
    )
    return len(rows) == 3
