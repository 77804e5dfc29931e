"""The market: its state and sessions by the feed's calendar, `market` events, tick sources."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from services.common.market import Market as Calendar
from tests.utils.api import T0, Event, EventReader, Market, ThreadedApi, open_stream

SATURDAY = datetime(2026, 1, 3, 15, 0, tzinfo=UTC)
CLOSE = datetime(2026, 1, 5, 21, 0, tzinfo=UTC)  # Monday's close in New York (16:00)
BEFORE_END = "query parameter 'start': must be before end"


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat().replace("+00:00", "Z")


def expected(calendar: str, at: datetime, extended: bool = False) -> dict[str, Any]:
    """The state exchange-calendars gives, as the API's JSON (without the feed's own fields)."""
    state = Calendar(calendar, extended).state(at)
    return {
        "calendar": state.calendar,
        "timezone": state.timezone,
        "is_open": state.is_open,
        "next_open": iso(state.next_open),
        "next_close": iso(state.next_close),
    }


async def set_feed(
    db: asyncpg.Connection,
    chain: list[str],
    calendar: str = "XNYS",
    extended_hours: bool = False,
    notify: bool = False,
) -> None:
    """Write the feed row as the fetcher does (and NOTIFY `feed` on commit)."""
    async with db.transaction():
        await db.execute(
            "INSERT INTO feed (chain, active, history, calendar, extended_hours)"
            " VALUES ($1::text[], ($1::text[])[1], ($1::text[])[1], $2, $3)"
            " ON CONFLICT (id) DO UPDATE SET"
            " chain = excluded.chain, active = excluded.active, calendar = excluded.calendar,"
            " extended_hours = excluded.extended_hours, updated_at = now()",
            chain,
            calendar,
            extended_hours,
        )
        if notify:
            await db.execute("SELECT pg_notify('feed', '')")


def fixed(at: datetime) -> Callable[[], datetime]:
    return lambda: at


async def next_of(stream: EventReader, event: str, timeout: float = 5.0, **data: object) -> Event:
    """The next event of one type (and with these data fields), passing over others."""
    while True:
        found = await stream.next(timeout)
        if found.event == event and all(found.data.get(k) == v for k, v in data.items()):
            return found


async def test_without_a_feed_the_settings_describe_the_market(
    database_url: str, db: asyncpg.Connection
) -> None:
    simulated = ThreadedApi(database_url).start()
    vendor = ThreadedApi(database_url, provider="alpaca,finnhub").start()
    try:
        vendor.app.state.market_watch.clock = fixed(SATURDAY)
        async with simulated.client() as a, vendor.client() as b:
            always = (await a.get("/api/v1/market")).json()
            nyse = (await b.get("/api/v1/market")).json()
    finally:
        simulated.stop()
        vendor.stop()
    assert always == {
        "calendar": "24/7",
        "timezone": "UTC",
        "is_open": True,
        "next_open": None,
        "next_close": None,
        "extended_hours": False,
        "collapse_closed": False,
    }
    assert nyse == {
        **expected("XNYS", SATURDAY),
        "extended_hours": False,
        "collapse_closed": True,
    }
    assert nyse["next_open"] == "2026-01-05T14:30:00Z" and not nyse["is_open"]


async def test_the_feed_row_decides_the_calendar(
    api: ThreadedApi, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    watch = api.app.state.market_watch
    await set_feed(db, ["alpaca", "finnhub"])
    watch.clock = fixed(SATURDAY)
    closed = (await client.get("/api/v1/market")).json()
    watch.clock = fixed(T0)
    trading = (await client.get("/api/v1/market")).json()
    early = T0.replace(hour=10)  # 05:00 in New York: only extended hours are open
    watch.clock = fixed(early)
    regular = (await client.get("/api/v1/market")).json()
    await set_feed(db, ["alpaca", "finnhub"], extended_hours=True)
    extended = (await client.get("/api/v1/market")).json()
    await set_feed(db, ["simulated"], calendar="NO SUCH")  # a calendar this API does not know
    unknown = (await client.get("/api/v1/market")).json()

    vendor = {"extended_hours": False, "collapse_closed": True}
    assert closed == {**expected("XNYS", SATURDAY), **vendor}
    assert trading == {**expected("XNYS", T0), **vendor}
    assert trading["is_open"] and trading["next_close"] == "2026-01-05T21:00:00Z"
    assert regular == {**expected("XNYS", early), **vendor}
    assert not regular["is_open"]
    assert extended == {
        **expected("XNYS", early, extended=True),
        "extended_hours": True,
        "collapse_closed": True,
    }
    assert extended["is_open"] and extended["next_close"] == "2026-01-06T01:00:00Z"
    # the configured calendar (24/7 here) rather than an error
    assert unknown["calendar"] == "24/7" and unknown["is_open"]
    assert not unknown["collapse_closed"]


async def test_sessions_are_the_calendars_clipped_to_the_window(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    start, end = datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 6, 18, tzinfo=UTC)
    await set_feed(db, ["alpaca"])
    regular = await client.get(
        "/api/v1/market/sessions", params={"start": ms(start), "end": ms(end)}
    )
    await set_feed(db, ["alpaca"], extended_hours=True)
    extended = await client.get(
        "/api/v1/market/sessions", params={"start": iso(start), "end": iso(end)}
    )
    year = await client.get(
        "/api/v1/market/sessions", params={"start": ms(end - timedelta(days=400)), "end": ms(end)}
    )
    long_ago = await client.get(
        "/api/v1/market/sessions", params={"start": "1000-01-01", "end": "1000-01-05"}
    )

    assert regular.status_code == extended.status_code == year.status_code == 200
    assert regular.json() == {
        "start": ms(start),
        "end": ms(end),
        "calendar": "XNYS",
        "timezone": "America/New_York",
        "sessions": [
            [ms(datetime(2026, 1, d, 14, 30, tzinfo=UTC)), ms(datetime(2026, 1, d, 21, tzinfo=UTC))]
            for d in (2, 5)
        ]
        + [[ms(datetime(2026, 1, 6, 14, 30, tzinfo=UTC)), ms(end)]],
    }
    spans = Calendar("XNYS", extended_hours=True).sessions(start, end)
    assert extended.json()["sessions"] == [[ms(a), ms(b)] for a, b in spans]
    assert extended.json()["sessions"][0][0] == ms(datetime(2026, 1, 2, 9, tzinfo=UTC))
    assert len(year.json()["sessions"]) == len(
        Calendar("XNYS", True).sessions(end - timedelta(days=400), end)
    )
    assert long_ago.status_code == 200 and long_ago.json()["sessions"] == []


async def test_a_market_that_never_closes_is_one_session(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/api/v1/market/sessions", params={"start": "1000-01-01", "end": "1000-01-03"}
    )
    body = response.json()
    assert response.status_code == 200 and body["calendar"] == "24/7"
    assert body["sessions"] == [[body["start"], body["end"]]]
    assert body["end"] - body["start"] == 2 * 86_400_000


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        (
            {"start": "2026-01-05", "end": "2026-01-05"},
            "query parameter 'start': must be before end",
        ),
        (
            {"start": "2026-01-06", "end": "2026-01-05"},
            "query parameter 'start': must be before end",
        ),
        (
            {"start": "2025-01-01", "end": "2026-02-06"},
            "query parameter 'start': the window from start to end exceeds 400 days",
        ),
        ({"end": "yesterday"}, "query parameter 'end': "),
        ({"start": "2026-13-01"}, "query parameter 'start': "),
    ],
)
async def test_bad_session_windows_are_422_naming_the_parameter(
    client: httpx.AsyncClient, params: dict[str, str], detail: str
) -> None:
    response = await client.get("/api/v1/market/sessions", params=params)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(detail)


async def test_a_stock_says_which_provider_its_last_tick_came_from(
    client: httpx.AsyncClient, market: Market, db: asyncpg.Connection
) -> None:
    await market.stocks("AAPL", "GE", "NVDA")
    await market.ticks([("AAPL", T0, 1), ("GE", T0, 2), ("NVDA", T0, 3)])
    await market.ticks([("AAPL", T0 + timedelta(seconds=1), 4)])
    sources = [("AAPL", T0, "finnhub"), ("AAPL", T0 + timedelta(seconds=1), "alpaca")]
    sources += [("GE", T0, "finnhub"), ("NVDA", T0, "simulated")]
    await db.executemany("UPDATE ticks SET source = $3 WHERE symbol = $1 AND ts = $2", sources)
    before = {s["symbol"]: s for s in (await client.get("/api/v1/stocks")).json()}
    await set_feed(db, ["alpaca", "finnhub"])
    stocks = {s["symbol"]: s for s in (await client.get("/api/v1/stocks")).json()}
    ge = (await client.get("/api/v1/stocks/GE")).json()

    assert {s: (v["source"], v["failover"]) for s, v in before.items()} == {
        "AAPL": ("alpaca", False),
        "GE": ("finnhub", False),  # no feed yet: nothing is a failover
        "NVDA": ("simulated", False),
    }
    assert {s: (v["source"], v["failover"]) for s, v in stocks.items()} == {
        "AAPL": ("alpaca", False),  # the last tick's, not an earlier one's
        "GE": ("finnhub", True),
        "NVDA": ("simulated", False),  # not in the chain at all
    }
    assert ge == stocks["GE"]


async def test_a_stream_starts_with_the_market_after_what_it_replays(
    client: httpx.AsyncClient, market: Market, db: asyncpg.Connection
) -> None:
    await market.stocks("AAPL")
    first = await market.ticks([("AAPL", T0, 1)])
    head = await market.ticks([("AAPL", T0 + timedelta(seconds=1), 2)])
    async with open_stream(client, skip=()) as stream:
        fresh = await stream.next()
    await set_feed(db, ["alpaca"])
    async with open_stream(
        client, {"symbols": "AAPL"}, skip=(), Last_Event_ID=str(first)
    ) as stream:
        replayed, resumed = await stream.take(2)
        now = (await client.get("/api/v1/market")).json()

    assert fresh.event == "market" and fresh.id is None
    assert fresh.data["calendar"] == "24/7" and fresh.data["is_open"]
    assert replayed.event == "price" and replayed.id == str(head)
    # no id: a browser's Last-Event-ID stays that of the last price
    assert resumed.event == "market" and resumed.id is None
    assert resumed.data == now and resumed.data["calendar"] == "XNYS"


async def test_a_feed_change_is_announced_with_every_stock_again(
    api: ThreadedApi, client: httpx.AsyncClient, market: Market, db: asyncpg.Connection
) -> None:
    await market.stocks("AAPL", "GE")
    await market.ticks([("AAPL", T0, 1), ("GE", T0, 2)])
    await db.execute("UPDATE ticks SET source = 'finnhub'")
    await set_feed(db, ["alpaca", "finnhub"])
    async with open_stream(client, {"symbols": "GE"}, skip=()) as stream:
        on_connect = await stream.next()
        await set_feed(db, ["finnhub", "alpaca"], calendar="XLON", notify=True)
        # the two are not ordered relative to each other
        found: dict[str, Event] = {}
        while len(found) < 2:
            event = await stream.next()
            if event.event == "stock" or event.data.get("calendar") == "XLON":
                found[event.event] = event
        changed, stock = found["market"], found["stock"]
    assert on_connect.event == "market" and on_connect.data["calendar"] == "XNYS"
    assert changed.data == (await client.get("/api/v1/market")).json()
    assert changed.data["calendar"] == "XLON" and changed.data["timezone"] == "Europe/London"
    # the stream's own symbols only, with their failover flag as the new chain makes it
    assert stock.data["symbol"] == "GE" and stock.data["source"] == "finnhub"
    assert not stock.data["failover"]
    assert api.metric("stockstreamer_api_notifications_total", channel="feed") >= 1


async def test_the_market_closing_is_announced_when_it_closes(
    database_url: str, db: asyncpg.Connection
) -> None:
    """A timer for the calendar's next close: the event comes when the shifted clock gets there."""
    await set_feed(db, ["alpaca"])
    shift = CLOSE - timedelta(seconds=5) - datetime.now(UTC)
    api = ThreadedApi(database_url)
    watch = api.app.state.market_watch
    watch.clock = lambda: datetime.now(UTC) + shift
    api.start()
    try:
        async with api.client() as client, open_stream(client, skip=()) as stream:
            seen = [await stream.next()]
            while seen[-1].data["is_open"]:
                seen.append(await next_of(stream, "market", timeout=10))
            closed_at = watch.clock()
    finally:
        api.stop()
    assert all(e.event == "market" and e.data["is_open"] for e in seen[:-1])
    assert seen[0].data["next_close"] == "2026-01-05T21:00:00Z"
    closed = seen[-1].data
    assert closed_at >= CLOSE
    assert closed == {
        **expected("XNYS", CLOSE),
        "extended_hours": False,
        "collapse_closed": True,
    }
    assert closed["next_open"] == "2026-01-06T14:30:00Z"
