"""The event stream: live prices, filters, stock/history events, heartbeats, resume and reset."""

from __future__ import annotations

import time
from datetime import timedelta

import httpx
import pytest

from tests.utils.api import T0, Market, ThreadedApi, ids, open_stream
from tests.utils.waiting import eventually


async def test_live_tick_arrives_at_once(
    api: ThreadedApi, client: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("AAPL")
    async with open_stream(client) as stream:
        assert stream.response.headers["x-accel-buffering"] == "no"
        assert stream.response.headers["cache-control"] == "no-store"
        written = time.monotonic()
        event_id = await market.ticks([("AAPL", T0, 101.5)])
        (event,) = await stream.take(1)
        latency = time.monotonic() - written
    assert event.event == "price" and event.id == str(event_id)
    assert event.data == {"symbol": "AAPL", "ts": int(T0.timestamp() * 1000), "price": 101.5}
    assert latency < 1.0
    # Counted by the server's thread just after the write the client may already have read.
    await eventually(
        lambda: api.metric("stockstreamer_api_events_sent_total", event="price") == 1, timeout=2
    )
    assert api.metric("stockstreamer_api_events_sent_total", event="price") == 1
    assert api.metric("stockstreamer_api_commit_to_send_seconds_count") == 1


async def test_symbols_filter_and_order(client: httpx.AsyncClient, market: Market) -> None:
    await market.stocks("AAPL", "NVDA", "GE")
    async with open_stream(client, {"symbols": "nvda,GE"}) as stream:
        for i in range(3):
            ts = T0 + timedelta(seconds=i)
            await market.ticks([("AAPL", ts, 1), ("NVDA", ts, 2), ("GE", ts, 3)])
        events = await stream.take(6)
    assert [e.data["symbol"] for e in events] == ["NVDA", "GE"] * 3
    assert ids(events) == sorted(ids(events))


async def test_backfilled_ticks_are_history_not_prices(
    client: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("AAPL", "NVDA")
    async with open_stream(client, {"symbols": "AAPL"}) as stream:
        past = T0 - timedelta(days=1)
        await market.history([("AAPL", past, 90), ("NVDA", past, 40)])
        live = await market.ticks([("AAPL", T0, 100)])
        # Different channels: their relative order is not part of the contract.
        history, price = sorted(await stream.take(2), key=lambda e: e.event)
    assert history.event == "history" and history.id is None
    assert history.data == {
        "symbols": ["AAPL"],
        "start": int(past.timestamp() * 1000),
        "end": int(past.timestamp() * 1000),
    }
    assert price.event == "price" and price.id == str(live) and price.data["price"] == 100


async def test_stock_event_when_metadata_changes(client: httpx.AsyncClient, market: Market) -> None:
    await market.stocks("AAPL", "NVDA")
    async with open_stream(client, {"symbols": "AAPL"}) as stream:
        await market.profile("NVDA", "Nvidia", "https://logo.example/nvda.png")
        await market.profile("AAPL", "Apple", "https://logo.example/aapl.png")
        first = await stream.next()
        # Changes of one symbol that arrive together are announced once, with the latest state.
        await market.week52("AAPL", 300, 100, previous_close=200)
        second = await stream.next()
    assert first.event == second.event == "stock"
    assert first.data["symbol"] == "AAPL" and first.data["name"] == "Apple"
    assert second.data["week52_high"] == 300 and second.data["previous_close"] == 200
    assert set(second.data) >= {"last_price", "change", "change_pct", "metadata_updated_at"}


async def test_heartbeat_comments(client: httpx.AsyncClient, market: Market) -> None:
    await market.stocks("AAPL")
    async with open_stream(client) as stream:
        # One timer beats for every stream: the first comes within an interval (the fixture's:
        # 0.5 s), the next an interval later.
        assert await stream.comment(timeout=2) == "heartbeat"
        started = time.monotonic()
        assert await stream.comment(timeout=2) == "heartbeat"
    assert 0.3 < time.monotonic() - started < 1.5


@pytest.mark.parametrize("how", ["header", "query"])
async def test_resume_has_no_gap_and_no_duplicate(
    client: httpx.AsyncClient, market: Market, how: str
) -> None:
    await market.stocks("AAPL", "GE")
    tick = iter(range(1000))

    async def write(n: int) -> None:
        for _ in range(n):
            ts = T0 + timedelta(seconds=next(tick))
            await market.ticks([("AAPL", ts, 1), ("GE", ts, 2)])

    async with open_stream(client) as stream:
        await write(3)
        seen = await stream.take(4)
    await write(5)  # missed while away
    resume = {"Last-Event-ID": str(seen[-1].id)} if how == "header" else {}
    params = {"last_event_id": str(seen[-1].id)} if how == "query" else None
    async with open_stream(client, params, **resume) as stream:
        await write(2)  # live after the reconnect
        seen += await stream.take(16 - len(seen))
    everything = ids(seen)
    assert everything == list(range(everything[0], everything[0] + 16))


async def test_resume_filtered_by_symbols(client: httpx.AsyncClient, market: Market) -> None:
    await market.stocks("AAPL", "GE")
    first = await market.ticks([("AAPL", T0, 1), ("GE", T0, 2)])
    await market.ticks(
        [("AAPL", T0 + timedelta(seconds=1), 3), ("GE", T0 + timedelta(seconds=1), 4)]
    )
    async with open_stream(client, {"symbols": "GE", "last_event_id": "0"}) as stream:
        events = await stream.take(2)
    assert [e.data["price"] for e in events] == [2, 4] and int(events[0].id or 0) <= first


async def test_resume_too_old_is_answered_with_reset(database_url: str, market: Market) -> None:
    await market.stocks("AAPL")
    await market.series("AAPL", 20)
    api = ThreadedApi(database_url, api_stream_replay_limit=10).start()
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
            async with open_stream(client, Last_Event_ID="3") as stream:
                reset = await stream.next()
                live = await market.ticks([("AAPL", T0 + timedelta(hours=1), 5)])
                (price,) = await stream.prices(1)
            head = live - 1
            async with open_stream(client, Last_Event_ID=str(head - 5)) as stream:
                replayed = await stream.take(6)
    finally:
        api.stop()
    assert reset.event == "reset" and reset.id == str(live - 1)
    assert reset.data["last_event_id"] == live - 1 and "10" in reset.data["reason"]
    assert price.id == str(live)
    assert ids(replayed) == list(range(head - 4, live + 1))


async def test_resume_ahead_of_the_database_is_reset(
    client: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("AAPL")
    head = await market.ticks([("AAPL", T0, 1)])
    async with open_stream(client, Last_Event_ID=str(head + 100)) as stream:
        reset = await stream.next()
    assert reset.event == "reset" and reset.data["last_event_id"] == head


async def test_bad_stream_requests(client: httpx.AsyncClient, market: Market) -> None:
    await market.stocks("AAPL")
    cases: list[tuple[dict[str, str], dict[str, str], int, str]] = [
        ({"symbols": "ZZZ"}, {}, 404, "unknown symbol(s): ZZZ"),
        ({"symbols": "a b"}, {}, 422, "query parameter 'symbols'"),
        ({"last_event_id": "-1"}, {}, 422, "query parameter 'last_event_id'"),
        ({"last_event_id": "x"}, {}, 422, "query parameter 'last_event_id'"),
        ({}, {"Last-Event-ID": "12abc"}, 422, "header 'Last-Event-ID'"),
    ]
    for params, headers, status, detail in cases:
        response = await client.get("/api/v1/stream", params=params, headers=headers)
        assert response.status_code == status, params or headers
        assert response.json()["detail"].startswith(detail)


async def test_streams_beyond_the_cap_are_refused_with_retry_after(
    database_url: str, market: Market
) -> None:
    await market.stocks("AAPL")
    api = ThreadedApi(database_url, api_max_streams=2, api_max_streams_per_client=1).start()
    try:
        clients = [api.client(f"127.0.0.{i}") for i in (2, 3, 4)]
        async with clients[0] as a, clients[1] as b, clients[2] as c:
            async with open_stream(a), open_stream(b):
                refused = await c.get("/api/v1/stream")  # each holds one, below its share
                healthy = await a.get("/healthz")  # the cap is on streams only
            # a closed stream frees its place once the server has seen it go
            await eventually(lambda: api.metric("stockstreamer_api_open_streams") == 0)
            async with open_stream(a):
                pass
    finally:
        api.stop()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert "too many open streams" in refused.json()["detail"]
    assert healthy.status_code == 200
    assert api.metric("stockstreamer_api_streams_refused_total") == 1


async def test_a_resume_takes_a_history_slot(database_url: str, market: Market) -> None:
    """Replaying reads history: with every slot busy a resume is refused; a fresh stream is not."""
    await market.stocks("AAPL")
    head = await market.ticks([("AAPL", T0, 1)])
    api = ThreadedApi(database_url, api_history_concurrency=2).start()
    try:
        for _ in range(2):  # two long history reads in flight
            api.run(api.app.state.limits.history_slots.acquire())
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
            busy = await client.get("/api/v1/stream", headers={"Last-Event-ID": str(head - 1)})
            async with open_stream(client):
                pass
            for _ in range(2):
                api.app.state.limits.history_slots.release()
            async with open_stream(client, Last_Event_ID=str(head - 1)) as stream:
                (replayed,) = await stream.prices(1)
    finally:
        api.stop()
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert "too many history requests" in busy.json()["detail"]
    assert replayed.id == str(head)
    assert api.metric("stockstreamer_api_history_in_flight") == 0


async def test_resume_and_latest_work_across_day_partitions(
    client: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("AAPL")
    days = [T0 + timedelta(days=d) for d in range(3)]  # three daily partitions of ticks
    first = await market.ticks([("AAPL", days[0], 1)])
    later = [await market.ticks([("AAPL", day, 2 + i)]) for i, day in enumerate(days[1:])]
    async with open_stream(client, Last_Event_ID=str(first)) as stream:
        replayed = await stream.prices(2)
    latest = (await client.get("/api/v1/prices/latest")).json()
    assert ids(replayed) == later
    assert latest[0]["event_id"] == later[-1] and latest[0]["price"] == 3
