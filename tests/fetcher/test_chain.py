"""The provider chain: failover to the next vendor, take-back, refused keys, market hours."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from services.common.models import Tick
from services.fetcher.config import FetcherSettings
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.providers import FinnhubProvider, SimulatedProvider, create_providers
from services.fetcher.providers.base import TradeStream
from services.fetcher.service import Fetcher
from services.runner.embedded_db import free_port
from services.runner.processes import ServiceProcess
from tests.fakes.finnhub import FakeFinnhub, settings_env
from tests.fakes.server import Fault
from tests.fakes.twelvedata import FakeTwelveData
from tests.fetcher.scripted import ScriptedProvider
from tests.utils.vendors import FAST, chain_settings, finnhub_settings, make_fetcher, sample
from tests.utils.waiting import eventually

QUOTE = "/api/v1/quote"
# Fixed times, so that market hours do not depend on when the tests run (New York is on EDT).
SATURDAY = datetime(2026, 3, 7, 15, 0, tzinfo=UTC)
MONDAY_OPEN = datetime(2026, 3, 9, 13, 30, tzinfo=UTC)  # 09:30 New York


class Clock:
    """A settable wall clock for market hours."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def listener(database_url: str) -> AsyncIterator[list[str]]:
    """Payloads of NOTIFY feed, in order."""
    conn = await asyncpg.connect(database_url)
    payloads: list[str] = []
    await conn.add_listener("feed", lambda _c, _p, _ch, payload: payloads.append(str(payload)))
    try:
        yield payloads
    finally:
        await conn.close()


async def feed_row(db: asyncpg.Connection) -> tuple[object, ...] | None:
    row = await db.fetchrow("SELECT chain, active, history, calendar, extended_hours FROM feed")
    return None if row is None else tuple(row)


def serving(fetcher: Fetcher, name: str) -> bool:
    return sample(fetcher, "active_source", provider=name) == 1


async def stopped(fetcher: Fetcher, task: asyncio.Task[int]) -> int:
    fetcher.stop()
    return await asyncio.wait_for(task, 15)


async def test_a_silent_vendor_hands_over_to_the_next_and_takes_back_when_healthy(
    database_url: str,
    db: asyncpg.Connection,
    finnhub: FakeFinnhub,
    twelvedata: FakeTwelveData,
    listener: list[str],
) -> None:
    fetcher = make_fetcher(chain_settings(database_url, finnhub, twelvedata))
    assert fetcher.history_provider is not None and fetcher.history_provider.name == "twelvedata"
    task = asyncio.create_task(fetcher.run())
    await eventually(lambda: sample(fetcher, "ticks_fetched_total", provider="finnhub") > 10)
    assert serving(fetcher, "finnhub") and not serving(fetcher, "twelvedata")
    assert len(twelvedata.http.calls("/quote")) == 0  # the second in line is not asked
    assert await feed_row(db) == (["finnhub", "twelvedata"], "finnhub", "twelvedata", "24/7", False)

    # Finnhub goes dark: its socket drops and is refused, its REST answers 503.
    finnhub.ws_down = True
    finnhub.http.script(QUOTE, *[Fault(503, "down")] * 100_000)
    await finnhub.drop_connections()
    await eventually(lambda: serving(fetcher, "twelvedata"), timeout=4, message="no failover")
    await eventually(lambda: sample(fetcher, "ticks_fetched_total", provider="twelvedata") > 0)
    assert sample(fetcher, "failovers_total", **{"from": "finnhub", "to": "twelvedata"}) == 1
    await eventually(lambda: _active(db, "twelvedata"))
    probe_failed = {"provider": "finnhub", "outcome": "failed"}
    await eventually(lambda: sample(fetcher, "probes_total", **probe_failed) >= 1)
    assert serving(fetcher, "twelvedata")  # a failed probe changes nothing

    # Finnhub is back: a probe brings fresh ticks and it serves again, trade socket and all.
    connects = finnhub.ws_connects
    finnhub.ws_down = False
    finnhub.http.faults[QUOTE].clear()
    await eventually(lambda: serving(fetcher, "finnhub"), timeout=6, message="no take-back")
    assert sample(fetcher, "failovers_total", **{"from": "twelvedata", "to": "finnhub"}) == 1
    assert sample(fetcher, "probes_total", provider="finnhub", outcome="ok") == 1
    await eventually(lambda: finnhub.ws_connects > connects)
    await eventually(lambda: _active(db, "finnhub"))
    assert await stopped(fetcher, task) == 0
    assert listener[:3] == ["finnhub", "twelvedata", "finnhub"]


async def _active(db: asyncpg.Connection, name: str) -> bool:
    return bool(await db.fetchval("SELECT active = $1 FROM feed", name))


async def test_a_refused_key_takes_a_vendor_out_for_good(
    database_url: str, finnhub: FakeFinnhub, twelvedata: FakeTwelveData
) -> None:
    settings = chain_settings(
        database_url, finnhub, twelvedata, finnhub_api_key="not-the-key", finnhub_stream=False
    )
    fetcher = make_fetcher(settings)
    task = asyncio.create_task(fetcher.run())
    await eventually(lambda: serving(fetcher, "twelvedata"))
    assert sample(fetcher, "provider_out", provider="finnhub") == 1
    await eventually(lambda: sample(fetcher, "ticks_fetched_total", provider="twelvedata") > 0)
    asked = len(finnhub.http.calls(QUOTE))
    await asyncio.sleep(2.5)  # more than two probe intervals
    assert len(finnhub.http.calls(QUOTE)) == asked  # never probed again
    assert serving(fetcher, "twelvedata")
    assert await stopped(fetcher, task) == 0


async def test_when_every_vendor_refuses_its_key_the_fetcher_exits_1(
    database_url: str, finnhub: FakeFinnhub
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "STOCKSTREAMER_FETCHER_METRICS_PORT": str(free_port()),
        "STOCKSTREAMER_CALENDAR": "24/7",
        "STOCKSTREAMER_BACKFILL": "0",
        "STOCKSTREAMER_FINNHUB_STREAM": "false",
        **settings_env(finnhub),
        "FINNHUB_API_KEY": "not-the-key",
    }
    proc = ServiceProcess("services.fetcher", env).start()
    try:
        assert await asyncio.to_thread(proc.wait, 30) == 1
    finally:
        proc.stop()
    assert "every live provider refused its keys" in proc.output
    assert "Traceback" not in proc.output


async def test_a_closed_market_spends_no_rounds_and_never_fails_over(
    database_url: str, db: asyncpg.Connection, finnhub: FakeFinnhub, twelvedata: FakeTwelveData
) -> None:
    # tracked already (a restart): no call goes to checking them with the vendor
    await db.execute(
        "INSERT INTO watchlist (symbol, origin, state) "
        "VALUES ('AAPL', 'config', 'live'), ('NVDA', 'config', 'live')"
    )
    settings = chain_settings(
        database_url,
        finnhub,
        twelvedata,
        calendar="XNYS",
        finnhub_stream=False,
        failover_after=0.5,
    )
    chain, history = create_providers(settings)
    fetcher = Fetcher(
        settings, chain, FetcherMetrics(CollectorRegistry()), history=history, clock=Clock(SATURDAY)
    )
    task = asyncio.create_task(fetcher.run())
    await eventually(lambda: sample(fetcher, "rounds_saved_total") >= 30)  # > 3 failover windows
    assert len(finnhub.http.calls(QUOTE)) == 2  # one round at start, one call per symbol
    assert len(twelvedata.http.calls("/quote")) == 0
    assert sample(fetcher, "failovers_total") == 0
    assert sample(fetcher, "market_open") == 0
    assert serving(fetcher, "finnhub")
    assert await stopped(fetcher, task) == 0


async def test_one_round_at_the_open_then_every_interval(
    database_url: str, finnhub: FakeFinnhub
) -> None:
    settings = finnhub_settings(database_url, finnhub, calendar="XNYS")
    clock = Clock(SATURDAY)
    fetcher = Fetcher(
        settings, create_providers(settings)[0], FetcherMetrics(CollectorRegistry()), clock=clock
    )
    try:
        await fetcher.price_round_once()  # at start, open or not
        assert len(finnhub.http.calls(QUOTE)) == 2
        for _ in range(3):
            await fetcher.price_round_once()
        assert len(finnhub.http.calls(QUOTE)) == 2
        assert sample(fetcher, "rounds_saved_total") == 3

        clock.now = MONDAY_OPEN + timedelta(seconds=5)
        await fetcher.price_round_once()
        assert sample(fetcher, "market_open") == 1
        assert len(finnhub.http.calls(QUOTE)) == 4
        assert fetcher.chain.silence() < 5  # silence counts from the open, not from Saturday
        await fetcher.price_round_once()
        assert len(finnhub.http.calls(QUOTE)) == 6
        assert sample(fetcher, "rounds_saved_total") == 3
    finally:
        await fetcher.writer.close()
        for provider in fetcher.providers:
            await provider.aclose()


@pytest.mark.parametrize(
    ("extended", "kept"),
    [
        (False, ["13:30", "15:00", "20:00"]),  # 09:30 to 16:00 New York; the close print kept
        (True, ["08:00", "13:29", "13:30", "15:00", "20:00", "20:01", "23:00", "23:59"]),
    ],
)
async def test_ticks_outside_the_session_are_dropped_and_counted_live_ones_stamped(
    database_url: str, extended: bool, kept: list[str]
) -> None:
    # A Monday; New York is on EDT (UTC-4), its extended hours 04:00 to 20:00 (08:00 to 24:00 UTC).
    day = datetime(2026, 3, 9, tzinfo=UTC)
    times = ["07:59", "08:00", "13:29", "13:30", "15:00", "20:00", "20:01", "23:00", "23:59"]
    ticks = [
        Tick("AAPL", day + timedelta(hours=int(t[:2]), minutes=int(t[3:])), Decimal(i + 1))
        for i, t in enumerate(times)
    ]
    settings = FetcherSettings(
        database_url=database_url, symbols="AAPL", calendar="XNYS", extended_hours=extended
    )
    fetcher = Fetcher(settings, ScriptedProvider([ticks]), FetcherMetrics(CollectorRegistry()))
    await fetcher.fetch_prices_once()
    buffered = fetcher.buffer.take(100)
    assert [t.ts.strftime("%H:%M") for t in buffered] == kept
    assert {t.source for t in buffered} == {"scripted"}
    dropped = sample(fetcher, "ticks_dropped_total", reason="outside_session")
    assert dropped == len(times) - len(kept)
    assert sample(fetcher, "ticks_fetched_total", provider="scripted") == len(times)


class _FirstSymbolStreamed(FinnhubProvider):
    """Finnhub with a socket that carries only the first symbol (as a plan's limit would)."""

    def trade_stream(self, symbols: Sequence[str]) -> TradeStream | None:
        return super().trade_stream(symbols[:1])


async def test_symbols_the_stream_does_not_cover_are_polled_while_it_runs(
    database_url: str, finnhub: FakeFinnhub
) -> None:
    settings = finnhub_settings(database_url, finnhub, finnhub_stream=True)
    assert settings.finnhub_api_key is not None
    provider = _FirstSymbolStreamed(
        settings.finnhub_api_key.get_secret_value(),
        base_url=finnhub.base_url,
        ws_url=finnhub.ws_url,
        stream=True,
        rate_limit=1000,
        rate_period=1.0,
        concurrency=4,
        timeout=5.0,
        reconnect_max=0.2,
    )
    fetcher = Fetcher(settings, provider, FetcherMetrics(CollectorRegistry()))
    task = asyncio.create_task(fetcher.run())
    await eventually(lambda: finnhub.subscriptions == [["AAPL"]] and finnhub.trades_sent > 3)
    await eventually(lambda: sample(fetcher, "stream_connected") == 1)
    streamed, polled = _quotes(finnhub, "AAPL"), _quotes(finnhub, "NVDA")
    await eventually(lambda: _quotes(finnhub, "NVDA") > polled + 5)
    assert _quotes(finnhub, "AAPL") == streamed  # its trades come over the socket
    assert await stopped(fetcher, task) == 0


def _quotes(finnhub: FakeFinnhub, symbol: str) -> int:
    return len([c for c in finnhub.http.calls(QUOTE) if c.params["symbol"] == symbol])


async def test_the_feed_row_waits_out_a_database_outage(caplog: pytest.LogCaptureFixture) -> None:
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/x?sslmode=disable"
    settings = FetcherSettings(
        database_url=unreachable,
        symbols="AAPL",
        shutdown_timeout=0.2,  # the buffer cannot be flushed: do not wait for it
        **FAST,  # type: ignore[arg-type]
    )
    fetcher = Fetcher(settings, SimulatedProvider(), FetcherMetrics(CollectorRegistry()))
    with caplog.at_level(logging.WARNING):
        task = asyncio.create_task(fetcher.run())
        await eventually(lambda: "feed row not stored" in caplog.text)
        await asyncio.sleep(0.5)  # retried meanwhile, logged once
        assert await stopped(fetcher, task) == 0
    assert caplog.text.count("feed row not stored") == 1
