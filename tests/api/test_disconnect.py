"""A client that goes away mid-request: its query is cancelled and what it held is free at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.utils.api import T0, Market, ThreadedApi
from tests.utils.postgres import locked, waiting_for_locks
from tests.utils.waiting import eventually

CASES = [
    # (path, headers, a table the request reads: locked, its query waits)
    ("/api/v1/prices", {}, "partition_policy"),
    ("/api/v1/bars", {}, "bars"),
    ("/api/v1/stream", {"Last-Event-ID": "0"}, "ticks"),  # a replay
]


@pytest.mark.parametrize(("path", "headers", "table"), CASES)
async def test_a_client_that_goes_away_has_its_query_cancelled_and_its_slot_freed(
    api: ThreadedApi,
    market: Market,
    database_url: str,
    path: str,
    headers: dict[str, str],
    table: str,
) -> None:
    await market.stocks("AAPL")
    await market.ticks([("AAPL", T0, 1)])
    async with api.client() as client, locked(database_url, table):
        request = asyncio.create_task(client.get(path, params={"symbols": "AAPL"}, headers=headers))
        await eventually(lambda: waiting_for_locks(database_url), message="query not waiting")
        assert api.metric("stockstreamer_api_history_in_flight") == 1
        request.cancel()  # the client closes its connection
        freed = await _freed(api, database_url)
        limits = api.app.state.limits
        for held in (limits.history, limits.connections, limits.streams):
            assert held.held("127.0.0.1") == 0
        assert not api.app.state.broadcaster.subscribers
    assert freed < 1  # long before the 5 s statement timeout would have ended it
    assert api.metric("stockstreamer_api_abandoned_requests_total", route=path) == 1
    assert request.cancelled()


async def _freed(api: ThreadedApi, database_url: str) -> float:
    """Seconds until the query is cancelled and its slot and connection are back."""
    gone = time.monotonic()
    pool = api.app.state.pool
    await eventually(lambda: _idle(database_url), timeout=1, message="query still running")
    await eventually(lambda: api.metric("stockstreamer_api_history_in_flight") == 0, timeout=1)
    await eventually(lambda: pool.get_idle_size() == pool.get_size(), timeout=1)
    return time.monotonic() - gone


async def _idle(database_url: str) -> bool:
    return await waiting_for_locks(database_url) == 0


@pytest.mark.parametrize(
    ("path", "table"), [("/api/v1/prices.csv", "ticks"), ("/api/v1/bars.csv", "bars")]
)
async def test_an_export_whose_client_goes_mid_file_is_cancelled_and_freed(
    api: ThreadedApi, market: Market, database_url: str, path: str, table: str
) -> None:
    await market.stocks("AAPL")
    await market.ticks([("AAPL", T0, 1)])
    params = {"symbols": "AAPL", "start": T0.isoformat()}
    async with api.client() as client, locked(database_url, table):
        # the file has begun (its header line is sent) when its first read waits for the lock
        request = asyncio.create_task(client.get(path, params=params))
        await eventually(lambda: waiting_for_locks(database_url), message="query not waiting")
        assert api.metric("stockstreamer_api_history_in_flight") == 1
        request.cancel()
        freed = await _freed(api, database_url)
        limits = api.app.state.limits
        for held in (limits.history, limits.connections):
            assert held.held("127.0.0.1") == 0
    assert freed < 1
    assert request.cancelled()
