"""A tab and the market: the closed banner, source badges, closed hours collapsed, time zones."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from bokeh.document import Document

from services.common.clients import TrustedProxies
from services.common.contract import Market, Stock
from services.dashboard.client import ApiClient
from services.dashboard.config import DashboardSettings
from services.dashboard.feed import Feed, MarketEvent, PriceEvent, StockEvent
from services.dashboard.metrics import DashboardMetrics
from services.dashboard.runtime import Runtime
from services.dashboard.session import DashboardSession
from services.dashboard.shaping import DAY_MS, HOUR_MS, Point
from tests.dashboard.conftest import parsed_stock, stock
from tests.dashboard.fake_api import FakeApi
from tests.dashboard.test_session import ready, settle

NOW = int(time.time() * 1000)
STEP = 30 * 60_000  # the canned history: a point every half hour of open time
SESSION = 6 * HOUR_MS + 30 * 60_000


def sessions(open_now: bool) -> list[list[int]]:
    """Seven days of 6.5-hour sessions a day apart (no weekend: the nights are closed enough)."""
    last_close = NOW + 4 * HOUR_MS if open_now else NOW - HOUR_MS
    return [[last_close - k * DAY_MS - SESSION, last_close - k * DAY_MS] for k in range(7, -1, -1)]


def history(spans: list[list[int]]) -> dict[str, Any]:
    ts = [t for a, b in spans for t in range(a, min(b, NOW), STEP)]
    price = [100.0 + i % 7 for i in range(len(ts))]
    return {"symbol": "AAPL", "ts": ts, "price": price, "downsampled": False, "bucket_ms": None}


def market(open_now: bool, **extra: Any) -> dict[str, Any]:
    spans = sessions(open_now)
    iso = lambda ms: datetime.fromtimestamp(ms / 1000, UTC).isoformat()  # noqa: E731
    return {
        "calendar": "XNYS",
        "timezone": "America/New_York",
        "is_open": open_now,
        "next_open": iso(spans[-1][0] + DAY_MS),
        "next_close": iso(spans[-1][1]),
        "extended_hours": False,
        "collapse_closed": True,
        **extra,
    }


@pytest.fixture
def vendor_api(fake_api: FakeApi) -> FakeApi:
    fake_api.market = market(open_now=False)
    fake_api.sessions = sessions(open_now=False)
    fake_api.series["AAPL"] = history(fake_api.sessions)
    fake_api.stocks = [
        stock("AAPL", 270.0, source="alpaca", failover=False),
        stock("INTC", 38.0, source="finnhub", failover=True),
    ]
    return fake_api


@pytest.fixture
async def runtime(vendor_api: FakeApi, metrics: DashboardMetrics) -> AsyncIterator[Runtime]:
    settings = DashboardSettings(
        api_url=vendor_api.url, dashboard_max_points=500, dashboard_window="1w"
    )
    client = ApiClient(vendor_api.url, 2.0, metrics)
    feed = Feed(client, metrics, 1.0)
    feed.stocks = {s["symbol"]: Stock.model_validate(s) for s in vendor_api.stocks}
    feed.market = Market.model_validate(vendor_api.market)  # as the feed has it once connected
    yield Runtime(settings, metrics, client, feed, TrustedProxies([]))
    await client.aclose()


@pytest.fixture
async def session(runtime: Runtime) -> AsyncIterator[DashboardSession]:
    s = DashboardSession(Document(), runtime)
    s.feed_reload_every = 0.2
    ready(s)
    await settle(s)
    yield s
    s.close()


def columns(s: DashboardSession, symbol: str = "AAPL") -> dict[str, list[float]]:
    return {k: list(v) for k, v in s.chart.lines[symbol].source.data.items()}


def gaps(values: list[float]) -> list[float]:
    return [b - a for a, b in zip(values, values[1:], strict=False)]


async def test_a_closed_market_shows_a_banner_and_hides_closed_hours(
    session: DashboardSession, vendor_api: FakeApi
) -> None:
    assert session.ui.market.visible and "Market closed — opens" in session.ui.market.text
    assert " ET</div>" in session.ui.market.text
    request = vendor_api.session_requests[-1]
    assert int(request["end"]) - int(request["start"]) == 7 * DAY_MS
    line = columns(session)
    # nights take no width: consecutive points are one step apart on the axis
    assert max(gaps(line["ts"])) > 15 * HOUR_MS
    assert max(gaps(line["x"])) <= STEP
    # the window is as wide as its open time
    start = NOW - 7 * DAY_MS
    open_in_window = sum(max(0, min(b, NOW) - max(a, start)) for a, b in vendor_api.sessions)
    assert session.chart.x_range.follow_interval == pytest.approx(open_in_window, abs=60_000)
    axis = session.chart.figure.xaxis[0]
    assert axis.axis_label == "Times: New York (ET) · closed hours hidden"
    assert session.chart.axis.ticker.args["tz"] == "America/New_York"
    assert session.chart.axis.ticker.args["opens"] == list(session.timeline.opens) != []
    assert session.ui.closed.visible and session.ui.closed.active == 0
    assert session.ui.zone.labels == ["New York (ET)", "Your local time"]
    # the logo sits on its line, on the same axis
    assert list(session.chart.logos.data["x"])[0] in line["x"]


async def test_a_live_tick_after_the_close_is_clamped_to_the_right_edge(
    session: DashboardSession,
) -> None:
    end = session.timeline.open_ms
    session.deliver(PriceEvent("AAPL", Point(NOW + 60_000, 123.0)))
    await settle(session)
    line = columns(session)
    assert line["ts"][-1] == NOW + 60_000 and line["x"][-1] == end
    assert session.ui.table_source.data["time"][0] == NOW + 60_000


async def test_the_market_opens_the_banner_goes_and_live_ticks_run_on(
    session: DashboardSession, vendor_api: FakeApi
) -> None:
    vendor_api.market = market(open_now=True)
    vendor_api.sessions = sessions(open_now=True)
    vendor_api.series["AAPL"] = history(vendor_api.sessions)
    asked = len(vendor_api.session_requests)
    session.deliver(MarketEvent(Market.model_validate(vendor_api.market)))
    await settle(session)
    assert not session.ui.market.visible and session.ui.market.text == ""
    assert len(vendor_api.session_requests) == asked + 1  # the session's edge moved: reloaded
    timeline = session.timeline
    history_end = max(columns(session)["x"])
    later = NOW + 10 * 60_000
    session.deliver(PriceEvent("AAPL", Point(later, 123.0)))
    await settle(session)
    line = columns(session)
    # open: the session runs on to its close, so a later tick lands further right
    assert timeline.x(later) - timeline.x(NOW) == 10 * 60_000
    assert line["x"][-1] == timeline.x(later) > history_end


async def test_source_badges_follow_stock_events(session: DashboardSession) -> None:
    table = session.ui.table_source.data
    assert list(table["source"]) == ["alpaca", "finnhub"]
    assert list(table["failover"]) == [False, True]
    session.deliver(StockEvent(parsed_stock("AAPL", 270.0, source="finnhub", failover=True)))
    await settle(session)
    assert table["source"][0] == "finnhub" and table["failover"][0] is True


async def test_real_time_on_request(session: DashboardSession, vendor_api: FakeApi) -> None:
    asked = len(vendor_api.session_requests)
    session.ui.closed.active = 1
    await settle(session)
    assert len(vendor_api.session_requests) == asked  # no sessions needed
    line = columns(session)
    assert line["x"] == line["ts"] and not session.timeline.collapsing
    assert session.chart.x_range.follow_interval == 7 * DAY_MS
    assert session.chart.figure.xaxis[0].axis_label == "Times: New York (ET)"
    assert session.chart.axis.ticker.args["opens"] == []
    session.ui.closed.active = 0
    await settle(session)
    assert len(vendor_api.session_requests) == asked + 1 and session.timeline.collapsing


async def test_the_hour_window_is_shown_in_real_time(
    session: DashboardSession, vendor_api: FakeApi
) -> None:
    asked = len(vendor_api.session_requests)
    session.ui.window.active = 0
    await settle(session)
    assert len(vendor_api.session_requests) == asked and not session.timeline.collapsing
    assert session.ui.closed.disabled


async def test_times_in_the_browsers_zone_on_request(session: DashboardSession) -> None:
    session.ui.zone.active = 1
    assert session.chart.axis.ticker.args["tz"] == ""
    assert session.chart.axis.hover.args["tz"] == ""
    assert session.chart.figure.xaxis[0].axis_label.startswith("Times: Your local time")
    time_column = next(c for c in session.ui.table.columns if c.field == "time")
    assert "timeZone" not in time_column.formatter.template  # type: ignore[attr-defined]
    # a market event later (the close, the open) keeps the viewer's choice
    session.deliver(MarketEvent(Market.model_validate(market(open_now=True))))
    await settle(session)
    assert session.ui.zone.active == 1 and session.chart.axis.ticker.args["tz"] == ""


async def test_the_candles_collapse_too(session: DashboardSession, vendor_api: FakeApi) -> None:
    spans = vendor_api.sessions
    ts = [spans[-2][1] - HOUR_MS, spans[-1][0]]  # the last hour of a day, the first of the next
    vendor_api.bars["AAPL"] = {
        "symbol": "AAPL",
        "ts": ts,
        "open": [1.0, 2.0],
        "high": [2.0, 3.0],
        "low": [0.5, 1.5],
        "close": [1.5, 2.5],
        "ticks": [5, 5],
    }
    session.ui.view.active = 1
    await settle(session)
    chart = session.candles
    assert chart is not None and chart.timeline.collapsing
    x = list(chart.source.data["x"])
    assert x[1] - x[0] == 60 * 60_000  # adjacent, though 17.5 hours apart
    assert chart.axis.ticker.args["tz"] == "America/New_York"
    assert chart.axis.ticker.args["opens"] == list(chart.timeline.opens) != []  # labels map back


async def test_an_api_without_market_hours_shows_real_time_in_the_browsers_zone(
    vendor_api: FakeApi, runtime: Runtime
) -> None:
    vendor_api.market = None
    runtime.feed.market = None
    s = DashboardSession(Document(), runtime)
    ready(s)
    await settle(s)
    assert not s.ui.market.visible and not s.ui.closed.visible
    assert s.ui.zone.active == 1 and s.ui.zone.labels == ["UTC", "Your local time"]
    assert vendor_api.session_requests == [] and columns(s)["x"] == columns(s)["ts"]
    s.close()
