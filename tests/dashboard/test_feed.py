"""The feed against a real HTTP server speaking the API contract."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest

from services.common.retry import Backoff
from services.dashboard.client import ApiClient
from services.dashboard.feed import (
    AlertEvent,
    Event,
    Feed,
    MarketEvent,
    PriceEvent,
    ReloadEvent,
    RemovedEvent,
    Status,
    StatusEvent,
    StockEvent,
)
from services.dashboard.metrics import DashboardMetrics
from services.dashboard.shaping import Point
from tests.dashboard.conftest import T0, bare_stock
from tests.dashboard.fake_api import FakeApi


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def feed(
    fake_api: FakeApi, metrics: DashboardMetrics
) -> AsyncIterator[tuple[Feed, list[Event]]]:
    client = ApiClient(fake_api.url, 2.0, metrics)
    feed = Feed(client, metrics, reconnect_max=0.2)
    events: list[Event] = []
    feed.subscribe(events.append)
    feed.start()
    try:
        yield feed, events
    finally:
        await feed.stop()


def prices(events: list[Event]) -> list[PriceEvent]:
    return [e for e in events if isinstance(e, PriceEvent)]


async def test_fans_out_stocks_then_live_then_prices(
    fake_api: FakeApi, feed: tuple[Feed, list[Event]]
) -> None:
    f, events = feed
    await until(lambda: f.status is Status.LIVE)
    fake_api.push("price", {"symbol": "AAPL", "ts": T0 + 5000, "price": 272.5}, id=7)
    await until(lambda: len(prices(events)) == 1)

    kinds = [type(e) for e in events]
    assert kinds[:4] == [StockEvent, StockEvent, StatusEvent, ReloadEvent]  # fresh: reload
    assert prices(events) == [PriceEvent("AAPL", Point(T0 + 5000, 272.5))]
    assert f.last_event_id == "7"
    assert f.stocks["AAPL"].last_price == 272.5
    assert fake_api.stream_requests == [None]


async def test_resumes_with_last_event_id_after_a_drop(
    fake_api: FakeApi, feed: tuple[Feed, list[Event]]
) -> None:
    f, events = feed
    await until(lambda: f.status is Status.LIVE)
    fake_api.push("price", {"symbol": "AAPL", "ts": T0 + 1, "price": 1.0}, id=1)
    await until(lambda: len(prices(events)) == 1)
    fake_api.drop_streams()
    fake_api.push("price", {"symbol": "AAPL", "ts": T0 + 2, "price": 2.0}, id=2)  # while away
    await until(lambda: len(fake_api.stream_requests) == 2 and f.status is Status.LIVE)
    await until(lambda: len(prices(events)) == 2)

    assert fake_api.stream_requests == [None, "1"]
    assert [p.point.price for p in prices(events)] == [1.0, 2.0]  # nothing missed, no repeats
    statuses = [e.status for e in events if isinstance(e, StatusEvent)]
    assert statuses == [Status.LIVE, Status.RECONNECTING, Status.LIVE]
    assert sum(isinstance(e, ReloadEvent) for e in events) == 1  # resumed: no reload needed


async def test_unreachable_while_down_then_live_again(
    fake_api: FakeApi, feed: tuple[Feed, list[Event]]
) -> None:
    f, events = feed
    await until(lambda: f.status is Status.LIVE)
    fake_api.stop()
    await until(lambda: f.status is Status.UNREACHABLE)
    fake_api.start()
    await until(lambda: f.status is Status.LIVE)
    statuses = [e.status for e in events if isinstance(e, StatusEvent)]
    assert statuses[-3:] == [Status.RECONNECTING, Status.UNREACHABLE, Status.LIVE] or statuses[
        -2:
    ] == [Status.UNREACHABLE, Status.LIVE]


async def test_stock_history_and_reset_events(
    fake_api: FakeApi, feed: tuple[Feed, list[Event]]
) -> None:
    f, events = feed
    await until(lambda: f.status is Status.LIVE)
    fake_api.push("stock", {"symbol": "AAPL", "week52_high": 400.0, "logo_url": "data:new"})
    fake_api.push("price", {"symbol": "AAPL"}, id=3)  # malformed: skipped, stream survives
    # history of no tracked stock, or of none at all, reloads nothing; of some, only those
    fake_api.push("history", {"symbols": [], "start": T0, "end": T0 + 10})
    fake_api.push("history", {"symbols": ["ZZZ"], "start": T0, "end": T0 + 10})
    fake_api.push("history", {"symbols": ["INTC", "ZZZ"], "start": T0, "end": T0 + 10})
    fake_api.push("reset", {"reason": "too old", "last_event_id": 99})
    await until(lambda: sum(isinstance(e, ReloadEvent) for e in events) == 3)

    changed = [e.stock for e in events if isinstance(e, StockEvent)][-1]
    assert changed.week52_high == 400.0 and changed.logo_url == "data:new"
    assert changed.name == "AAPL Inc."  # a partial update keeps the rest
    reloads = [e for e in events if isinstance(e, ReloadEvent)]
    assert reloads == [
        ReloadEvent(None),  # the fresh connection's
        ReloadEvent(frozenset({"INTC"}), T0, T0 + 10),
        ReloadEvent(None),  # the reset's
    ]
    assert f.last_event_id == "99"
    assert f.status is Status.LIVE and not prices(events)


def test_backoff_grows_and_stays_bounded() -> None:
    backoff = Backoff(0.25, 5.0)
    waits = [backoff.next() for _ in range(12)]
    assert all(0 < w <= 5.0 for w in waits)
    assert waits[0] <= 0.25 and waits[-1] >= 2.5
    backoff.reset()
    assert backoff.next() <= 0.25


async def test_unsubscribed_sessions_get_nothing(
    fake_api: FakeApi, feed: tuple[Feed, list[Event]]
) -> None:
    f, events = feed
    await until(lambda: f.status is Status.LIVE)
    late: list[Event] = []
    f.subscribe(late.append)
    f.unsubscribe(late.append)
    fake_api.push("price", {"symbol": "INTC", "ts": T0 + 9, "price": 39.0}, id=4)
    await until(lambda: len(prices(events)) == 1)
    assert late == []


async def test_malformed_stocks_are_skipped_and_the_feed_goes_live(
    fake_api: FakeApi, feed: tuple[Feed, list[Event]]
) -> None:
    f, _events = feed
    await until(lambda: f.status is Status.LIVE)
    fake_api.stocks = [{"symbol": ["AAPL"]}, {"name": "no symbol"}, *fake_api.stocks]
    fake_api.drop_streams()  # reconnect: the stocks are read again
    await until(lambda: len(fake_api.stream_requests) == 2 and f.status is Status.LIVE)
    assert sorted(f.stocks) == ["AAPL", "INTC"]
    assert f._task is not None and not f._task.done()


def market_at(is_open: bool, change_in: float) -> dict[str, object]:
    """A market that opens (or closes) `change_in` seconds from now."""
    change = (datetime.now(UTC) + timedelta(seconds=change_in)).isoformat()
    later = (datetime.now(UTC) + timedelta(hours=6)).isoformat()
    return {
        "calendar": "XNYS",
        "timezone": "America/New_York",
        "is_open": is_open,
        "next_open": later if is_open else change,
        "next_close": change if is_open else later,
        "extended_hours": False,
        "collapse_closed": True,
    }


async def test_the_market_comes_on_connect_and_with_market_events(
    fake_api: FakeApi, feed: tuple[Feed, list[Event]]
) -> None:
    fake_api.market = market_at(False, 3600)
    f, events = feed
    await until(lambda: f.status is Status.LIVE)
    assert f.market is not None and not f.market.is_open and f.market.calendar == "XNYS"
    fake_api.push("market", market_at(True, 3600))
    fake_api.push("market", {"calendar": "XNYS"})  # malformed: dropped, the stream survives
    fake_api.push("price", {"symbol": "AAPL", "ts": T0 + 5, "price": 1.0}, id=1)
    await until(lambda: len(prices(events)) == 1)
    markets = [e.market for e in events if isinstance(e, MarketEvent)]
    assert [m.is_open for m in markets] == [False, True] and f.market.is_open


async def test_an_api_without_market_hours_still_goes_live(
    fake_api: FakeApi, feed: tuple[Feed, list[Event]]
) -> None:
    f, events = feed
    await until(lambda: f.status is Status.LIVE)
    assert f.market is None and fake_api.market_requests == 1
    assert not any(isinstance(e, MarketEvent) for e in events)


async def test_the_market_is_asked_again_when_it_is_due_to_open(
    fake_api: FakeApi, feed: tuple[Feed, list[Event]]
) -> None:
    f, events = feed
    f.market_lag, f.market_recheck = 0.05, 0.1
    fake_api.market = market_at(False, 0.3)
    await until(lambda: f.market is not None)
    # the API has not turned yet when the open is due: asked again, until it has
    await until(lambda: fake_api.market_requests >= 3)
    fake_api.market = market_at(True, 3600)
    await until(lambda: f.market is not None and f.market.is_open)
    assert [e.market.is_open for e in events if isinstance(e, MarketEvent)] == [False, True]
    asked = fake_api.market_requests
    await asyncio.sleep(0.3)
    assert fake_api.market_requests == asked  # the close is an hour away: nothing until then


def firing(firing_id: int, **extra: object) -> dict[str, object]:
    """An `alert` event's data, as the API sends it."""
    return {
        "firing_id": firing_id,
        "alert_id": 3,
        "symbol": "AAPL",
        "condition": "above",
        "value": 271.0,
        "price": 271.5,
        "line": 271.0,
        "ts": T0 + 7,
        "note": "take profit",
        "channels": ["browser"],
        **extra,
    }


async def test_watchlist_states_come_and_a_removed_symbol_goes(
    fake_api: FakeApi, feed: tuple[Feed, list[Event]]
) -> None:
    f, events = feed
    await until(lambda: f.status is Status.LIVE)
    amd = {**bare_stock("AMD").model_dump(mode="json"), "origin": "api"}
    fake_api.push("stock", {**amd, "state": "pending"})
    fake_api.push("stock", {**amd, "state": "backfilling", "progress": 0.5})
    fake_api.push("stock", {"symbol": "AMD", "progress": 0.75})  # a partial one keeps the rest
    fake_api.push("stock", {**amd, "state": "live", "progress": None})
    removed = {**dict.fromkeys(amd), "symbol": "AMD", "state": "removed"}
    fake_api.push("stock", removed)
    fake_api.push("stock", removed)  # again: nothing more
    fake_api.push("stock", {**removed, "symbol": "ZZZ"})  # never known: nothing
    fake_api.push("price", {"symbol": "AAPL", "ts": T0 + 5, "price": 1.0}, id=1)
    await until(lambda: len(prices(events)) == 1)

    changes = [e for e in events if isinstance(e, StockEvent) and e.stock.symbol == "AMD"]
    watches = [e.watch for e in changes if e.watch is not None]
    assert [(w.state, w.progress, w.origin) for w in watches] == [
        ("pending", None, "api"),
        ("backfilling", 0.5, "api"),
        ("backfilling", 0.75, "api"),
        ("live", None, "api"),
    ]
    assert [e for e in events if isinstance(e, RemovedEvent)] == [RemovedEvent("AMD")]
    assert "AMD" not in f.stocks and "AMD" not in f.watch
    assert f.watch["AAPL"].state == "live"  # an API from before the watchlist: live


async def test_a_symbol_removed_while_away_goes_on_reconnect(
    fake_api: FakeApi, feed: tuple[Feed, list[Event]]
) -> None:
    f, events = feed
    await until(lambda: f.status is Status.LIVE)
    fake_api.stocks = fake_api.stocks[:1]
    fake_api.drop_streams()
    await until(lambda: len(fake_api.stream_requests) == 2 and f.status is Status.LIVE)
    assert [e for e in events if isinstance(e, RemovedEvent)] == [RemovedEvent("INTC")]
    assert sorted(f.stocks) == ["AAPL"]


async def test_each_firing_is_fanned_out_once(
    fake_api: FakeApi, feed: tuple[Feed, list[Event]]
) -> None:
    f, events = feed
    await until(lambda: f.status is Status.LIVE)
    fake_api.push("alert", firing(1))
    fake_api.push("alert", firing(1))  # delivered again: the same firing
    fake_api.push("alert", {"firing_id": 2})  # malformed: dropped, the stream survives
    fake_api.push("alert", firing(2, symbol="INTC", condition="below", note=None))
    fake_api.push("price", {"symbol": "AAPL", "ts": T0 + 5, "price": 1.0}, id=1)
    await until(lambda: len(prices(events)) == 1)
    fired = [e.firing for e in events if isinstance(e, AlertEvent)]
    assert [(x.firing_id, x.symbol, x.note) for x in fired] == [
        (1, "AAPL", "take profit"),
        (2, "INTC", None),
    ]
    assert fired[0].channels == ["browser"] and fired[0].price == 271.5
    assert list(f.firings) == fired  # what a page opened later starts with
