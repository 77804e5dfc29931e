"""The fetcher against a real PostgreSQL: batches, duplicates, bad data, retries, NOTIFY."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from services.common.models import Profile, Tick, Week52
from services.fetcher.config import FetcherSettings
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.providers.base import Provider, ProviderError
from services.fetcher.providers.simulated import SimulatedProvider
from services.fetcher.service import Fetcher
from services.runner.embedded_db import free_port
from tests.fetcher.notifications import Notifications
from tests.fetcher.scripted import ScriptedProvider
from tests.utils.api import Market
from tests.utils.waiting import eventually

SYMBOLS = "AAPL,NVDA"


OPENED: list[Fetcher] = []


@pytest.fixture(autouse=True)
async def _close_writers() -> AsyncIterator[None]:
    """The writer keeps its connection between calls: close every test's when it ends."""
    yield
    while OPENED:
        await OPENED.pop().writer.close()


def make_fetcher(url: str, provider: Provider, **overrides: object) -> Fetcher:
    settings = FetcherSettings(
        database_url=url,
        symbols=SYMBOLS,
        price_interval=0.05,
        retry_wait_initial=0.01,
        retry_wait_max=0.02,
        **overrides,  # type: ignore[arg-type]
    )
    fetcher = Fetcher(settings, provider, FetcherMetrics(CollectorRegistry()))
    OPENED.append(fetcher)
    return fetcher


def sample(fetcher: Fetcher, name: str, **labels: str) -> float:
    return fetcher.metrics.total(name, **labels)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


async def test_a_round_is_written_in_one_batch_and_notified(
    database_url: str, db: asyncpg.Connection, notes: Notifications
) -> None:
    t = now()
    ticks = [Tick("AAPL", t, Decimal("270.5"), 10), Tick("NVDA", t, Decimal("185.25"))]
    fetcher = make_fetcher(database_url, ScriptedProvider([ticks]))
    await fetcher.fetch_prices_once()
    await fetcher.writer.flush_once()
    await fetcher.writer.close()

    rows = await db.fetch("SELECT symbol, ts, price, volume, event_id FROM ticks ORDER BY symbol")
    assert [(r["symbol"], r["ts"], r["price"], r["volume"]) for r in rows] == [
        ("AAPL", t, Decimal("270.5"), 10),
        ("NVDA", t, Decimal("185.25"), None),
    ]
    channel, payload = await notes.next()
    assert channel == "prices"
    assert int(payload) == max(r["event_id"] for r in rows)
    assert sample(fetcher, "ticks_written_total") == 2
    assert sample(fetcher, "batch_write_seconds_count") == 1


async def test_a_tick_delivered_twice_is_stored_once(
    database_url: str, db: asyncpg.Connection, notes: Notifications
) -> None:
    tick = Tick("AAPL", now(), Decimal("1.5"))
    fetcher = make_fetcher(database_url, ScriptedProvider([[tick], [tick]]))
    for _ in range(2):
        await fetcher.fetch_prices_once()
        await fetcher.writer.flush_once()
    await fetcher.writer.close()
    assert await db.fetchval("SELECT count(*) FROM ticks") == 1
    assert sample(fetcher, "ticks_written_total") == 1
    # the first batch announces the price and the symbol's first source; a batch that stored
    # nothing new announces nothing
    assert [channel for channel, _ in await notes.drain()] == ["prices", "stocks"]


async def test_bad_data_is_dropped_counted_and_never_written(
    database_url: str, db: asyncpg.Connection
) -> None:
    t = now()
    bad = [
        Tick("AAPL", t, Decimal("0")),
        Tick("AAPL", t + timedelta(seconds=1), Decimal("-2")),
        Tick("AAPL", t + timedelta(seconds=2), Decimal("NaN")),
        Tick("AAPL", t + timedelta(seconds=3), Decimal("Infinity")),
        Tick("AAPL", t + timedelta(minutes=5), Decimal("1")),
        Tick("MSFT", t, Decimal("1")),
    ]
    good = Tick("NVDA", t, Decimal("10"))
    fetcher = make_fetcher(database_url, ScriptedProvider([[*bad, good]]))
    await fetcher.fetch_prices_once()
    await fetcher.writer.flush_once()
    await fetcher.writer.close()

    assert await db.fetchval("SELECT count(*) FROM ticks") == 1
    dropped = {
        reason: sample(fetcher, "ticks_dropped_total", reason=reason)
        for reason in (
            "non_positive_price",
            "non_finite_price",
            "future_timestamp",
            "untracked_symbol",
        )
    }
    assert dropped == {
        "non_positive_price": 2,
        "non_finite_price": 2,
        "future_timestamp": 1,
        "untracked_symbol": 1,
    }


async def test_provider_errors_are_retried_then_the_round_is_skipped(
    database_url: str, db: asyncpg.Connection
) -> None:
    t = now()
    script: list[list[Tick] | ProviderError] = [
        ProviderError("timeout", "read timed out"),
        ProviderError("http_5xx", "502 Bad Gateway"),
        ProviderError("http_5xx", "503"),  # third failure: the round is given up
        [Tick("AAPL", t, Decimal("3"))],  # the next round works again
    ]
    provider = ScriptedProvider(script)
    fetcher = make_fetcher(database_url, provider, retry_attempts=3)
    await fetcher.fetch_prices_once()
    assert provider.calls == 3
    assert sample(fetcher, "rounds_skipped_total", call="quotes") == 1
    assert sample(fetcher, "provider_errors_total", kind="http_5xx") == 2
    assert sample(fetcher, "provider_errors_total", kind="timeout") == 1
    assert len(fetcher.buffer) == 0

    await fetcher.fetch_prices_once()
    await fetcher.writer.flush_once()
    await fetcher.writer.close()
    assert await db.fetchval("SELECT count(*) FROM ticks") == 1


async def test_an_unexpected_provider_bug_does_not_stop_the_loop(database_url: str) -> None:
    class Broken(ScriptedProvider):
        async def quotes(self, symbols: object) -> list[Tick]:
            self.calls += 1
            raise KeyError("surprise")

    provider = Broken()
    fetcher = make_fetcher(database_url, provider)
    task = asyncio.create_task(fetcher.run())
    await eventually(lambda: provider.calls >= 3)
    fetcher.stop()
    await asyncio.wait_for(task, 10)
    assert sample(fetcher, "provider_errors_total", kind="unexpected") >= 3


async def test_metadata_is_upserted_and_changes_are_notified(
    database_url: str, db: asyncpg.Connection, notes: Notifications
) -> None:
    provider = ScriptedProvider()
    provider.profile_list = [Profile("AAPL", "Apple Inc.", "https://logo/aapl.svg")]
    provider.week52_list = [Week52("AAPL", Decimal("300"), Decimal("150"), Decimal("270"))]
    fetcher = make_fetcher(database_url, provider)
    await db.execute("INSERT INTO stocks (symbol) VALUES ('AAPL')")

    assert await fetcher.refresh_metadata_once()
    row = await db.fetchrow("SELECT * FROM stocks WHERE symbol = 'AAPL'")
    assert row is not None
    assert (row["name"], row["logo_url"]) == ("Apple Inc.", "https://logo/aapl.svg")
    assert (row["week52_high"], row["week52_low"], row["previous_close"]) == (300, 150, 270)
    assert await notes.next() == ("stocks", "AAPL")

    # the same values again: refreshed time, but no change to announce
    first_update = row["metadata_updated_at"]
    assert await fetcher.refresh_metadata_once()
    updated = "SELECT metadata_updated_at FROM stocks WHERE symbol = 'AAPL'"
    assert await db.fetchval(updated) > first_update
    assert await notes.drain() == []

    provider.week52_list = [Week52("AAPL", Decimal("310"), Decimal("150"))]
    assert await fetcher.refresh_metadata_once()
    assert await notes.next() == ("stocks", "AAPL")
    # a missing previous close does not erase the known one
    assert await db.fetchval("SELECT previous_close FROM stocks WHERE symbol = 'AAPL'") == 270


async def test_metadata_is_never_deleted_and_reinserted(
    database_url: str, db: asyncpg.Connection
) -> None:
    provider = ScriptedProvider()
    provider.profile_list = [Profile("AAPL", "Apple", None)]
    fetcher = make_fetcher(database_url, provider)
    await db.execute("INSERT INTO stocks (symbol) VALUES ('AAPL')")
    await Market(db).ticks([("AAPL", now(), 1)])
    for _ in range(2):
        await fetcher.refresh_metadata_once()
    # a delete would have failed on the tick's foreign key, or cascaded it away
    assert await db.fetchval("SELECT count(*) FROM ticks") == 1


async def test_run_writes_every_symbol_and_stops_cleanly(
    database_url: str, db: asyncpg.Connection
) -> None:
    fetcher = make_fetcher(database_url, SimulatedProvider(step_seconds=0.05))
    task = asyncio.create_task(fetcher.run())

    async def both_written() -> bool:
        ticks = await db.fetchval("SELECT count(DISTINCT symbol) FROM ticks")
        logos = await db.fetchval("SELECT count(*) FROM stocks WHERE logo_url IS NOT NULL")
        return bool(ticks == logos == 2)

    await eventually(both_written)
    fetcher.stop()
    await asyncio.wait_for(task, 10)
    assert len(fetcher.buffer) == 0
    written = await db.fetchval("SELECT count(*) FROM ticks WHERE NOT backfilled")
    assert written == sample(fetcher, "ticks_written_total") > 0


async def test_a_full_buffer_drops_the_oldest_and_counts_them() -> None:
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/x?sslmode=disable"
    t = now()
    rounds = [[Tick("AAPL", t + timedelta(seconds=i), Decimal(1)) for i in range(4)]] * 2
    fetcher = make_fetcher(unreachable, ScriptedProvider(rounds), buffer_capacity=5)
    await fetcher.fetch_prices_once()
    await fetcher.writer.flush_once()  # fails: the batch goes back, nothing lost yet
    assert len(fetcher.buffer) == 4
    await fetcher.fetch_prices_once()
    assert len(fetcher.buffer) == 5
    assert sample(fetcher, "ticks_dropped_total", reason="buffer_full") == 3


async def test_an_impossible_52_week_range_is_dropped_and_counted(
    database_url: str, db: asyncpg.Connection
) -> None:
    provider = ScriptedProvider()
    provider.profile_list = [Profile("AAPL", "Apple", None), Profile("NVDA", "NVIDIA", None)]
    provider.week52_list = [
        Week52("AAPL", Decimal("300"), Decimal("150"), Decimal("0")),  # the close is unusable
        Week52("NVDA", Decimal("100"), Decimal("200")),  # low above high
    ]
    fetcher = make_fetcher(database_url, provider)
    assert await fetcher.refresh_metadata_once()  # the rest is stored, not retried forever
    rows = await db.fetch(
        "SELECT symbol, name, week52_high, previous_close FROM stocks ORDER BY symbol"
    )
    assert [tuple(r) for r in rows] == [
        ("AAPL", "Apple", 300, None),
        ("NVDA", "NVIDIA", None, None),
    ]
    assert sample(fetcher, "provider_dropped_total", kind="invalid_fields") == 2


async def test_live_prices_beyond_the_52_week_range_extend_it(
    database_url: str, db: asyncpg.Connection, notes: Notifications
) -> None:
    t = now()
    provider = ScriptedProvider(
        [
            [Tick("AAPL", t, Decimal("200"))],  # inside: nothing to store
            [Tick("AAPL", t + timedelta(seconds=1), Decimal("312.5"))],  # a new high
            [Tick("AAPL", t + timedelta(seconds=2), Decimal("140"))],  # a new low
        ]
    )
    provider.week52_list = [Week52("AAPL", Decimal("300"), Decimal("150"), Decimal("270"))]
    fetcher = make_fetcher(database_url, provider)
    await db.execute("INSERT INTO stocks (symbol) VALUES ('AAPL')")
    assert await fetcher.refresh_metadata_once()
    assert await notes.next() == ("stocks", "AAPL")

    async def stored() -> tuple[Decimal, Decimal, Decimal]:
        row = await db.fetchrow(
            "SELECT week52_high, week52_low, previous_close FROM stocks WHERE symbol = 'AAPL'"
        )
        assert row is not None
        return row["week52_high"], row["week52_low"], row["previous_close"]

    await fetcher.fetch_prices_once()
    await fetcher.flush_ranges_once()
    assert await stored() == (300, 150, 270)
    assert await notes.drain() == []

    await fetcher.fetch_prices_once()
    await fetcher.flush_ranges_once()
    assert await stored() == (Decimal("312.5"), 150, 270)
    assert await notes.next() == ("stocks", "AAPL")

    await fetcher.fetch_prices_once()
    await fetcher.flush_ranges_once()
    assert await stored() == (Decimal("312.5"), 140, 270)  # the previous close is kept
    assert await notes.next() == ("stocks", "AAPL")
