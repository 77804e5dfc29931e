"""Per-client limits: one client address over its share is refused (429), others are served."""

from __future__ import annotations

import asyncio

import httpx

from tests.utils.api import T0, Market, ThreadedApi, open_stream
from tests.utils.postgres import locked, waiting_for_locks
from tests.utils.waiting import eventually

A, B, C = "127.0.0.2", "127.0.0.3", "127.0.0.4"  # three clients, each its own loopback address
REFUSED = "stockstreamer_api_client_limit_refused_total"


def assert_refused(response: httpx.Response, retry_after: int, detail: str) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= retry_after
    assert detail in response.json()["detail"]


async def test_a_client_holding_its_streams_is_refused_and_another_is_served(
    database_url: str, market: Market
) -> None:
    await market.stocks("AAPL")
    api = ThreadedApi(database_url, api_max_streams_per_client=2).start()
    try:
        async with api.client(A) as a, api.client(B) as b:
            async with open_stream(a), open_stream(a):
                refused = await a.get("/api/v1/stream")
                async with open_stream(b):
                    pass
            # a closed stream gives its place back to its client
            await eventually(lambda: api.metric("stockstreamer_api_open_streams") == 0)
            async with open_stream(a):
                pass
    finally:
        api.stop()
    assert_refused(refused, 5, "too many open streams from this address (at most 2)")
    assert api.metric(REFUSED, limit="streams") == 1


async def test_a_client_over_its_history_rate_is_refused_and_another_is_served(
    database_url: str, market: Market
) -> None:
    await market.stocks("AAPL")
    head = await market.ticks([("AAPL", T0, 1)])
    api = ThreadedApi(database_url, api_history_rate=0.5, api_history_burst=3).start()
    try:
        async with api.client(A) as a, api.client(B) as b:
            served = [await a.get(path) for path in ("/api/v1/prices", "/api/v1/bars")]
            # a stream's replay is a history read too; a fresh stream is not
            async with open_stream(a, Last_Event_ID=str(head - 1)):
                pass
            over = [await a.get(path) for path in ("/api/v1/prices", "/api/v1/bars")]
            resume = await a.get("/api/v1/stream", headers={"Last-Event-ID": str(head - 1)})
            async with open_stream(a):
                pass
            latest = await a.get("/api/v1/prices/latest")  # not a history read
            other = await b.get("/api/v1/prices")
    finally:
        api.stop()
    assert [r.status_code for r in served] == [200, 200]
    for response in (*over, resume):
        assert_refused(response, 1, "too many history requests from this address")
    assert "at most 0.5 a second, bursts of 3" in over[0].json()["detail"]
    assert latest.status_code == 200 and other.status_code == 200
    assert api.metric(REFUSED, limit="history_rate") == 3


async def test_a_client_holding_its_history_slots_waits_then_is_refused_and_another_is_served(
    database_url: str, market: Market
) -> None:
    await market.stocks("AAPL")
    api = ThreadedApi(
        database_url, api_history_concurrency=4, api_history_concurrency_per_client=1
    ).start()
    try:
        async with api.client(A) as a, api.client(B) as b:
            async with locked(database_url, "partition_policy"):  # every /prices reads it first
                first = asyncio.create_task(a.get("/api/v1/prices"))
                await eventually(lambda: waiting_for_locks(database_url))
                second = await a.get("/api/v1/prices")  # waits a second for a's own, then 429
                other = asyncio.create_task(b.get("/api/v1/prices"))
                await eventually(lambda: api.metric("stockstreamer_api_history_in_flight") == 2)
            responses = [await first, await other]
    finally:
        api.stop()
    assert_refused(second, 1, "too many history requests at once from this address (at most 1)")
    assert [r.status_code for r in responses] == [200, 200]
    assert api.metric(REFUSED, limit="history_concurrency") == 1
    assert api.metric("stockstreamer_api_history_refused_total") == 0  # the process had room


async def test_a_client_waits_for_its_own_history_slot_rather_than_being_refused(
    database_url: str, market: Market
) -> None:
    await market.stocks("AAPL")
    api = ThreadedApi(
        database_url, api_history_concurrency=4, api_history_concurrency_per_client=1
    ).start()
    try:
        async with api.client(A) as a:
            async with locked(database_url, "partition_policy"):
                first = asyncio.create_task(a.get("/api/v1/prices"))
                await eventually(lambda: waiting_for_locks(database_url))
                second = asyncio.create_task(a.get("/api/v1/prices"))
                await asyncio.sleep(0.3)  # queued behind the first, within its second of grace
            responses = [await first, await second]
    finally:
        api.stop()
    assert [r.status_code for r in responses] == [200, 200]


async def test_a_client_holding_its_connections_is_refused_and_another_is_served(
    database_url: str, market: Market
) -> None:
    await market.stocks("AAPL")
    api = ThreadedApi(database_url, api_pool_size=4, api_pool_size_per_client=2).start()
    try:
        async with api.client(A) as a, api.client(B) as b:
            async with locked(database_url, "stocks"):

                async def waiting(count: int) -> bool:
                    return await waiting_for_locks(database_url) == count

                held = [asyncio.create_task(a.get("/api/v1/stocks")) for _ in range(2)]
                await eventually(lambda: waiting(2))
                refused = await a.get("/api/v1/stocks")
                other = asyncio.create_task(b.get("/api/v1/stocks"))
                await eventually(lambda: waiting(3))
            responses = [*(await asyncio.gather(*held)), await other]
    finally:
        api.stop()
    assert_refused(refused, 1, "too many requests at once from this address (at most 2)")
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert api.metric(REFUSED, limit="connections") == 1


async def test_forwarded_for_is_believed_only_from_a_trusted_proxy(
    database_url: str, market: Market
) -> None:
    await market.stocks("AAPL")
    api = ThreadedApi(
        database_url, trusted_proxies=A, api_history_rate=0.1, api_history_burst=1
    ).start()
    viewer, other = "198.51.100.1", "198.51.100.2"
    try:
        async with api.client(A) as proxy, api.client(B) as stranger:
            # an untrusted peer cannot pass as someone else: both count as the peer itself
            untrusted = [
                await stranger.get("/api/v1/prices", headers={"X-Forwarded-For": hop})
                for hop in (viewer, other)
            ]
            # the trusted proxy speaks for each viewer, and for itself when it names none
            trusted = [
                await proxy.get("/api/v1/prices", headers=headers)
                for headers in (
                    {"X-Forwarded-For": viewer},
                    {"X-Forwarded-For": f"{other}, {viewer}"},  # the nearest hop is the client
                    {"X-Forwarded-For": other},
                    {},
                )
            ]
    finally:
        api.stop()
    assert [r.status_code for r in untrusted] == [200, 429]
    assert [r.status_code for r in trusted] == [200, 429, 200, 200]


async def test_proxies_named_by_host_are_trusted(database_url: str, market: Market) -> None:
    await market.stocks("AAPL")
    api = ThreadedApi(
        database_url, trusted_proxies="localhost", api_history_rate=0.1, api_history_burst=1
    ).start()
    try:
        async with api.client("127.0.0.1") as proxy:
            await eventually(lambda: api.app.state.limits.trusted.trusts("127.0.0.1"))
            statuses = [
                (await proxy.get("/api/v1/prices", headers={"X-Forwarded-For": hop})).status_code
                for hop in ("198.51.100.1", "198.51.100.2", "198.51.100.1")
            ]
    finally:
        api.stop()
    assert statuses == [200, 200, 429]
