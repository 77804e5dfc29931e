"""The watchlist: STOCKSTREAMER_SYMBOLS reconciled at start, symbols added and removed live."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from services.common.db import connect
from services.common.models import Bar
from services.fetcher.backfill import Backfill
from services.fetcher.config import FetcherSettings
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.providers.alpaca import AlpacaProvider
from services.fetcher.providers.base import Provider
from services.fetcher.providers.simulated import SimulatedProvider
from services.fetcher.service import Fetcher
from services.fetcher.watchlist import Entry, beyond, reconcile
from services.runner.embedded_db import free_port
from tests.fakes.finnhub import FakeFinnhub
from tests.fetcher.notifications import Notifications
from tests.fetcher.test_backfill import backfill_once
from tests.utils.vendors import finnhub_settings
from tests.utils.vendors import make_fetcher as vendor_fetcher
from tests.utils.waiting import eventually

ROW = "SELECT state, progress, reason, origin FROM watchlist WHERE symbol = $1"


class SlowHistory(SimulatedProvider):
    """The simulated market, whose history of the `slow` symbols takes `delay` s a request."""

    def __init__(self, slow: Sequence[str] = (), delay: float = 0.0) -> None:
        super().__init__(step_seconds=0.05)
        self.slow = set(slow)
        self.delay = delay
        self.asked: list[tuple[str, ...]] = []

    async def bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> list[Bar]:
        self.asked.append(tuple(symbols))
        if self.slow & set(symbols):
            await asyncio.sleep(self.delay)
        return await super().bars(symbols, start, end)


def make_fetcher(url: str, provider: Provider | list[Provider], **overrides: Any) -> Fetcher:
    values: dict[str, Any] = {
        "database_url": url,
        "symbols": "AAPL",
        "backfill": 0,
        "price_interval": 0.05,
        "retry_wait_initial": 0.01,
        "retry_wait_max": 0.02,
        **overrides,
    }
    return Fetcher(FetcherSettings(**values), provider, FetcherMetrics(CollectorRegistry()))


@asynccontextmanager
async def running(fetcher: Fetcher) -> AsyncIterator[Fetcher]:
    task = asyncio.create_task(fetcher.run())
    try:
        yield fetcher
    finally:
        fetcher.stop()
        await asyncio.wait_for(task, 20)


async def add(db: asyncpg.Connection, symbol: str) -> None:
    """What the API does on POST: the row (a rejected one tried again) and NOTIFY, together."""
    async with db.transaction():
        await db.execute(
            "INSERT INTO watchlist (symbol, origin) VALUES ($1, 'api') "
            "ON CONFLICT (symbol) DO UPDATE SET state = 'pending', reason = NULL "
            "WHERE watchlist.state = 'rejected'",
            symbol,
        )
        await db.execute("SELECT pg_notify('watchlist', $1)", symbol)


async def remove(db: asyncpg.Connection, symbol: str) -> None:
    """What the API does on DELETE."""
    async with db.transaction():
        await db.execute("DELETE FROM watchlist WHERE symbol = $1", symbol)
        await db.execute("SELECT pg_notify('watchlist', $1)", symbol)


async def state(db: asyncpg.Connection, symbol: str) -> str | None:
    state: str | None = await db.fetchval("SELECT state FROM watchlist WHERE symbol = $1", symbol)
    return state


async def live_ticks(db: asyncpg.Connection, symbol: str) -> int:
    query = "SELECT count(*) FROM ticks WHERE symbol = $1 AND NOT backfilled"
    return int(await db.fetchval(query, symbol))


def sample(fetcher: Fetcher, name: str, **labels: str) -> float:
    return fetcher.metrics.total(name, **labels)


class Observer:
    """Every (state, progress) a watchlist row goes through, read on a connection of its own."""

    def __init__(self, url: str, symbol: str) -> None:
        self.url = url
        self.symbol = symbol
        self.seen: list[tuple[str | None, float | None]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Observer:
        conn = await asyncpg.connect(self.url)

        async def watch() -> None:
            try:
                while True:
                    row = await conn.fetchrow(ROW, self.symbol)
                    now = (row["state"], row["progress"]) if row else (None, None)
                    if not self.seen or self.seen[-1] != now:
                        self.seen.append(now)
                    await asyncio.sleep(0.01)
            finally:
                await conn.close()

        self._task = asyncio.create_task(watch())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    @property
    def states(self) -> list[str | None]:
        """The states in order, each once."""
        states: list[str | None] = []
        for s, _ in self.seen:
            if not states or states[-1] != s:
                states.append(s)
        return states

    @property
    def progress(self) -> list[float]:
        return [p for s, p in self.seen if s == "backfilling" and p is not None]


# -- reconciling with STOCKSTREAMER_SYMBOLS --------------------------------------------------------


async def test_the_config_rows_follow_the_settings_and_api_rows_stay(
    database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO watchlist (symbol, origin, state, reason) VALUES "
        "('OLD', 'config', 'live', NULL), ('AMD', 'api', 'live', NULL), "
        "('MSFT', 'api', 'live', NULL), ('ZZX', 'config', 'rejected', 'unknown symbol'), "
        "('GE', 'config', 'live', NULL)"
    )
    notes = await Notifications.listen(database_url, ("watchlist",))
    conn = await connect(database_url, "stockstreamer_writer")  # as the fetcher connects
    try:
        changes = await reconcile(conn, ["AAPL", "MSFT", "ZZX", "GE"])
        assert sorted(changes) == [
            ("AAPL", "added"),  # configured, missing: pending
            ("MSFT", "configured"),  # an api row of a configured symbol becomes config
            ("OLD", "removed"),  # no longer configured
            ("ZZX", "configured"),  # rejected and still configured: tried again at start
        ]
        rows = await db.fetch("SELECT symbol, origin, state, reason FROM watchlist ORDER BY 1")
        assert [tuple(r) for r in rows] == [
            ("AAPL", "config", "pending", None),
            ("AMD", "api", "live", None),  # api rows are kept across restarts
            ("GE", "config", "live", None),  # unchanged
            ("MSFT", "config", "live", None),
            ("ZZX", "config", "pending", None),
        ]
        received = await notes.drain()
        assert sorted(received) == [("watchlist", s) for s in ("AAPL", "MSFT", "OLD", "ZZX")]
        # a second start with the same settings changes nothing, and says nothing
        assert await reconcile(conn, ["AAPL", "MSFT", "ZZX", "GE"]) == []
        assert await notes.drain() == []
    finally:
        await conn.close()
        await notes.close()


def test_limits_count_configuration_first_then_the_oldest_request_and_not_rejections() -> None:
    entries = [
        Entry("AAPL", "config", "live"),
        Entry("NVDA", "config", "pending"),
        Entry("ZZ", "api", "rejected"),
        Entry("AMD", "api", "live"),
        Entry("TSLA", "api", "pending"),
    ]
    assert beyond(entries, 3) == ["TSLA"]
    assert beyond(entries, 4) == []


def test_more_configured_symbols_than_the_maximum_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="STOCKSTREAMER_MAX_SYMBOLS allows at most 2"):
        FetcherSettings(symbols="AAPL,NVDA,GE", max_symbols=2)


# -- taking symbols on ---------------------------------------------------------------------------


async def test_configured_symbols_of_a_new_database_backfill_then_go_live(
    database_url: str, db: asyncpg.Connection
) -> None:
    provider = SlowHistory(slow=["AAPL"], delay=0.3)
    fetcher = make_fetcher(database_url, provider, backfill="3d")
    async with Observer(database_url, "AAPL") as seen, running(fetcher):
        await eventually(lambda: state(db, "AAPL"), timeout=10, message="no row for AAPL")
        await eventually(lambda: _is(db, "AAPL", "live"), timeout=20)
    assert seen.states[-2:] == ["backfilling", "live"]
    assert seen.progress[0] == 0.0
    row = await db.fetchrow(ROW, "AAPL")
    assert row is not None
    assert (row["origin"], row["progress"], row["reason"]) == ("config", None, None)
    assert await db.fetchval("SELECT count(*) FROM ticks WHERE symbol = 'AAPL' AND backfilled")
    assert sample(fetcher, "symbols_added_total", origin="config") == 1
    assert sample(fetcher, "symbols_tracked") == 1


async def _is(db: asyncpg.Connection, symbol: str, wanted: str) -> bool:
    return await state(db, symbol) == wanted


async def test_a_symbol_added_while_running_is_backfilled_then_live(
    database_url: str, db: asyncpg.Connection
) -> None:
    # 40 days of history are three requests (the last day first, then at most 31 days each):
    # slow enough that its progress is stored on the way
    provider = SlowHistory(slow=["AMD"], delay=0.7)
    fetcher = make_fetcher(database_url, provider, backfill="40d")
    notes = await Notifications.listen(database_url, ("watchlist",))
    try:
        async with running(fetcher), Observer(database_url, "AMD") as seen:
            await eventually(lambda: _is(db, "AAPL", "live"), timeout=20)
            await notes.drain()
            await add(db, "AMD")
            await eventually(lambda: _is(db, "AMD", "live"), timeout=30, message="AMD not live")
            before = await live_ticks(db, "AMD")
            await eventually(lambda: _more(db, "AMD", before + 5), message="no live AMD ticks")
            assert "AMD" in fetcher.symbols and "AMD" in fetcher.healer.symbols
        received = [payload for channel, payload in await notes.drain() if channel == "watchlist"]
    finally:
        await notes.close()
    assert seen.states[:1] == [None] and seen.states[-2:] == ["backfilling", "live"]
    progress = seen.progress
    assert progress[0] == 0.0 and any(0 < p < 1 for p in progress), progress
    assert progress == sorted(progress)
    # the API's own NOTIFY, then one per state or progress the fetcher stored
    assert received.count("AMD") >= 1 + len(set(progress)) + 1
    oldest = await db.fetchval("SELECT min(bucket) FROM bars WHERE symbol = 'AMD' AND width_s = 60")
    assert oldest < datetime.now(UTC) - timedelta(days=39)
    assert await db.fetchval("SELECT name FROM stocks WHERE symbol = 'AMD'") == "AMD (simulated)"
    assert sample(fetcher, "symbols_added_total", origin="api") == 1
    assert sample(fetcher, "symbols_tracked") == 2


async def _more(db: asyncpg.Connection, symbol: str, than: int) -> bool:
    return await live_ticks(db, symbol) > than


async def test_a_removed_symbol_stops_at_once(database_url: str, db: asyncpg.Connection) -> None:
    fetcher = make_fetcher(database_url, SimulatedProvider(step_seconds=0.05))
    async with running(fetcher):
        await add(db, "AMD")
        await eventually(lambda: _is(db, "AMD", "live"), timeout=20)
        await eventually(lambda: _more(db, "AMD", 3))
        await remove(db, "AMD")
        await eventually(lambda: "AMD" not in fetcher.symbols, message="AMD still fetched")
        removed_at = datetime.now(UTC)
        # Ticks are stored in order: once AAPL's later ones are, every AMD tick taken is too.
        await eventually(lambda: _stored_after(db, "AAPL", removed_at))
        stopped = await live_ticks(db, "AMD")
        later = datetime.now(UTC)
        await eventually(lambda: _stored_after(db, "AAPL", later))
        assert await live_ticks(db, "AMD") == stopped
        newest = await db.fetchval("SELECT max(ts) FROM ticks WHERE symbol = 'AMD'")
        assert newest <= removed_at
        assert "AMD" not in fetcher.healer.symbols
    assert sample(fetcher, "symbols_removed_total") == 1
    assert sample(fetcher, "symbols_tracked") == 1
    # its data stays until retention drops it
    assert await live_ticks(db, "AMD") == stopped > 0


async def test_a_symbol_removed_during_the_start_backfill_is_asked_for_no_more(
    database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO watchlist (symbol, origin, state) "
        "VALUES ('AAPL', 'config', 'live'), ('AMD', 'api', 'live')"
    )
    # 40 days: three requests for both (tracked when the fetcher starts), each slow
    provider = SlowHistory(slow=["AAPL"], delay=0.5)
    fetcher = make_fetcher(database_url, provider, backfill="40d")
    async with running(fetcher):
        await eventually(lambda: provider.asked, timeout=20)
        assert provider.asked[0] == ("AAPL", "AMD")
        await remove(db, "AMD")
        await eventually(
            lambda: fetcher.backfill.idle.is_set() and fetcher.backfill.planned.is_set()
        )
        await eventually(lambda: "AMD" not in fetcher.symbols)
    assert provider.asked[-1] == ("AAPL",)
    assert len(provider.asked) == 3


async def _stored_after(db: asyncpg.Connection, symbol: str, after: datetime) -> bool:
    query = "SELECT count(*) FROM ticks WHERE symbol = $1 AND ts > $2"
    return bool(await db.fetchval(query, symbol, after))


async def test_the_simulator_rejects_zz_symbols_configured_or_added(
    database_url: str, db: asyncpg.Connection
) -> None:
    fetcher = make_fetcher(database_url, SimulatedProvider(step_seconds=0.05), symbols="AAPL,ZZCFG")
    async with running(fetcher):
        await eventually(lambda: _is(db, "ZZCFG", "rejected"), timeout=20)
        await add(db, "ZZTOP")
        await eventually(lambda: _is(db, "ZZTOP", "rejected"), timeout=20)
        await eventually(lambda: _more(db, "AAPL", 3))
        assert fetcher.symbols == ["AAPL"]
    rows = await db.fetch(
        "SELECT symbol, origin, reason, progress FROM watchlist WHERE state = 'rejected' "
        "ORDER BY symbol"
    )
    assert [tuple(r) for r in rows] == [
        ("ZZCFG", "config", "unknown symbol", None),
        ("ZZTOP", "api", "unknown symbol", None),
    ]
    # not a tick of either was stored, not even those fetched before the check
    assert await db.fetchval("SELECT count(*) FROM ticks WHERE symbol LIKE 'ZZ%'") == 0
    assert sample(fetcher, "symbols_rejected_total", reason="unknown") == 2


async def test_more_symbols_than_allowed_are_rejected_with_the_reason(
    database_url: str, db: asyncpg.Connection
) -> None:
    fetcher = make_fetcher(database_url, SimulatedProvider(step_seconds=0.05), max_symbols=2)
    async with running(fetcher):
        await add(db, "AMD")
        await eventually(lambda: _is(db, "AMD", "live"), timeout=20)
        await add(db, "TSLA")
        await eventually(lambda: _is(db, "TSLA", "rejected"), timeout=20)
        row = await db.fetchrow(ROW, "TSLA")
        assert row is not None
        assert row["reason"] == "at most 2 symbols are tracked (STOCKSTREAMER_MAX_SYMBOLS)"
        assert "TSLA" not in fetcher.symbols
        # room again: the API resets a rejected row to pending when it is added again
        await remove(db, "AMD")
        await add(db, "TSLA")
        await eventually(lambda: _is(db, "TSLA", "live"), timeout=20)
    assert sample(fetcher, "symbols_rejected_total", reason="limit") == 1


async def test_a_vendor_limit_is_enforced_with_its_own_reason(
    database_url: str, db: asyncpg.Connection
) -> None:
    # Alpaca backs the simulator up: its socket's symbol limit bounds the watchlist all the same
    unreachable = f"http://127.0.0.1:{free_port()}"
    alpaca = AlpacaProvider(
        "key",
        "secret",
        data_url=unreachable,
        trading_url=unreachable,
        stream_url=unreachable.replace("http", "ws"),
        stream_symbol_limit=2,
    )
    fetcher = make_fetcher(database_url, [SimulatedProvider(step_seconds=0.05), alpaca])
    async with running(fetcher):
        await add(db, "AMD")
        await eventually(lambda: _is(db, "AMD", "live"), timeout=20)
        await add(db, "TSLA")
        await eventually(lambda: _is(db, "TSLA", "rejected"), timeout=20)
    reason = await db.fetchval("SELECT reason FROM watchlist WHERE symbol = 'TSLA'")
    assert reason == (
        "Alpaca's IEX feed streams at most 2 symbols (STOCKSTREAMER_ALPACA_STREAM_SYMBOL_LIMIT)"
    )


# -- the vendors ---------------------------------------------------------------------------------


async def test_finnhub_streams_the_added_symbols_and_rejects_one_it_does_not_know(
    database_url: str, db: asyncpg.Connection, finnhub: FakeFinnhub
) -> None:
    settings = finnhub_settings(database_url, finnhub, symbols="AAPL", finnhub_stream=True)
    fetcher = vendor_fetcher(settings)
    async with running(fetcher):
        await eventually(lambda: finnhub.subscriptions and finnhub.subscriptions[-1] == ["AAPL"])
        await add(db, "MSFT")
        await eventually(lambda: _is(db, "MSFT", "live"), timeout=20)
        # the socket subscribes again, now to both
        await eventually(lambda: sorted(finnhub.subscriptions[-1]) == ["AAPL", "MSFT"])
        await eventually(lambda: _more(db, "MSFT", 3))
        await add(db, "FOOBAR")
        await eventually(lambda: _is(db, "FOOBAR", "rejected"), timeout=20)
        await remove(db, "MSFT")
        await eventually(lambda: finnhub.subscriptions[-1] == ["AAPL"])
    reason = await db.fetchval("SELECT reason FROM watchlist WHERE symbol = 'FOOBAR'")
    assert reason == "unknown symbol: Finnhub has no quote for it"


async def test_a_backfill_reports_each_symbols_share_as_it_goes(database_url: str) -> None:
    fetcher = make_fetcher(database_url, SimulatedProvider(step_seconds=0.05), backfill="40d")
    shares: list[dict[str, float]] = []
    backfill = Backfill(
        fetcher.writer,
        ["AAPL"],
        timedelta(days=40),
        fetcher._call,
        fetcher.metrics,
        fetcher.drops,
        fetcher.market,
        progress=shares.append,
    )
    await backfill_once(fetcher, datetime.now(UTC), backfill)
    values = [share["AAPL"] for share in shares]
    # the last day, then at most 31 days a request
    assert len(values) == 3 and values == sorted(values) and values[-1] == 1.0
    assert 0 < values[0] < 0.05


# -- outages -------------------------------------------------------------------------------------


async def test_a_change_while_the_listener_is_down_is_not_lost(
    database_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    url_file = tmp_path / "database-url"
    url_file.write_text(database_url)
    fetcher = make_fetcher(
        database_url, SimulatedProvider(step_seconds=0.05), database_url_file=url_file
    )
    async with running(fetcher):
        await eventually(lambda: _is(db, "AAPL", "live"), timeout=20)
        await eventually(lambda: fetcher.watchlist.connected)
        # the listener's connection dies, and cannot come back for now
        url_file.write_text(f"postgresql://postgres@127.0.0.1:{free_port()}/x?sslmode=disable")
        await db.execute("SELECT pg_terminate_backend($1)", fetcher.watchlist.pid)
        await eventually(lambda: not fetcher.watchlist.connected)
        await add(db, "AMD")  # its NOTIFY reaches nobody
        assert await state(db, "AMD") == "pending"
        url_file.write_text(database_url)
        await eventually(lambda: _is(db, "AMD", "live"), timeout=20, message="the add was lost")
        await eventually(lambda: _more(db, "AMD", 3))
    assert sample(fetcher, "watchlist_reconnects_total") >= 1
