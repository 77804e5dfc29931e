"""One tab's document: history load, live ticks, stock events, status and controls."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable

import pytest
from bokeh.core.validation.check import check_integrity
from bokeh.document import Document
from bokeh.document.events import (
    ColumnsPatchedEvent,
    ColumnsStreamedEvent,
    DocumentChangedEvent,
)
from bokeh.events import DocumentReady

from services.common.bars import LEVELS
from services.common.clients import TrustedProxies
from services.common.contract import Stock
from services.dashboard.client import ApiClient
from services.dashboard.config import DashboardSettings
from services.dashboard.export import INTERVALS
from services.dashboard.feed import Feed, PriceEvent, ReloadEvent, Status, StatusEvent, StockEvent
from services.dashboard.metrics import DashboardMetrics
from services.dashboard.runtime import Runtime
from services.dashboard.session import MAX_PENDING, DashboardSession, Phase
from services.dashboard.shaping import DAY_MS, DOWN_COLOUR, HOUR_MS, UP_COLOUR, Point, logo_anchor
from tests.dashboard.conftest import T0, parsed_stock
from tests.dashboard.fake_api import FakeApi

FEED_EVERY = 0.5  # the sessions' least time between loads the feed asks for, in these tests


async def drain(doc: Document) -> None:
    """Run the document's queued callbacks as the server's event loop would."""
    for _ in range(50):
        callbacks = list(doc.session_callbacks)
        if not callbacks:
            return
        for cb in callbacks:
            doc.remove_next_tick_callback(cb)  # type: ignore[arg-type]
            result = cb.callback()
            if inspect.isawaitable(result):
                await result
    raise AssertionError("callbacks keep coming")


async def settle(s: DashboardSession) -> None:
    """Until nothing is left to do: queued callbacks, loads put off, the load in flight."""
    loop = asyncio.get_running_loop()
    for _ in range(40):
        await drain(s.doc)
        if s.later is not None:
            await asyncio.sleep(max(0.0, s.later.when() - loop.time()) + 0.01)
        elif s.load is None or s.load.done():
            await drain(s.doc)
            if (
                not s.doc.session_callbacks
                and s.later is None
                and (s.load is None or s.load.done())
            ):
                return
        else:
            await asyncio.wait([s.load], timeout=5)
    raise AssertionError("the session never settles")


async def settle_until(
    s: DashboardSession, condition: Callable[[], bool], timeout: float = 5.0
) -> None:
    """Run the document's callbacks and the event loop until `condition` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await drain(s.doc)
        await asyncio.sleep(0.01)


def ready(s: DashboardSession) -> None:
    """What the browser says once it has drawn the page (over the WebSocket)."""
    s.doc.callbacks.trigger_event(DocumentReady())


@pytest.fixture
async def runtime(fake_api: FakeApi, metrics: DashboardMetrics) -> AsyncIterator[Runtime]:
    settings = DashboardSettings(api_url=fake_api.url, dashboard_max_points=50)
    client = ApiClient(fake_api.url, 2.0, metrics)
    feed = Feed(client, metrics, 1.0)
    feed.stocks = {s["symbol"]: Stock.model_validate(s) for s in fake_api.stocks}
    yield Runtime(settings, metrics, client, feed, TrustedProxies([]))
    await client.aclose()


@pytest.fixture
async def session(runtime: Runtime) -> AsyncIterator[DashboardSession]:
    s = DashboardSession(Document(), runtime, client="203.0.113.7")
    s.feed_reload_every = FEED_EVERY
    ready(s)
    await settle(s)
    yield s
    s.close()


def data(s: DashboardSession, symbol: str) -> dict[str, list[float]]:
    return {k: list(v) for k, v in s.chart.lines[symbol].source.data.items()}


async def test_a_page_starts_once_the_browser_has_drawn_it(
    runtime: Runtime, fake_api: FakeApi
) -> None:
    s = DashboardSession(Document(), runtime, client="203.0.113.7")
    runtime.feed.stocks["INTC"] = parsed_stock("INTC", 40.0)  # changed meanwhile
    await settle(s)
    # what a page load that never connects costs: its models; no request, no feed, no candles
    assert list(s.chart.lines) == ["AAPL", "INTC"] and s.candles is None
    assert fake_api.price_requests == [] and runtime.feed.sessions == 0
    ready(s)
    await settle(s)
    assert runtime.feed.sessions == 1
    assert s.ui.table_source.data["price"][1] == 40.0
    assert fake_api.price_requests[0]["symbols"] == "AAPL,INTC"
    assert fake_api.forwarded_for == ["203.0.113.7"]  # the API counts the viewer, not us
    ready(s)  # said twice: nothing more
    await settle(s)
    assert len(fake_api.price_requests) == 1 and runtime.feed.sessions == 1
    s.close()
    assert runtime.feed.sessions == 0


async def test_sessions_drawn_beyond_the_cap_get_a_notice_and_nothing_else(
    runtime: Runtime, fake_api: FakeApi, metrics: DashboardMetrics
) -> None:
    runtime.settings.dashboard_max_sessions = 1
    first, second = (DashboardSession(Document(), runtime) for _ in range(2))
    ready(first)
    ready(second)
    await settle(first)
    await settle(second)
    assert runtime.feed.sessions == 1 and len(fake_api.price_requests) == 1
    assert [root.name for root in second.doc.roots] == ["busy"]
    assert (
        metrics.registry.get_sample_value(
            "stockstreamer_dashboard_pages_refused_total", {"reason": "sessions"}
        )
        == 1
    )
    first.close()


async def test_the_document_passes_bokehs_checks(session: DashboardSession) -> None:
    session.ui.view.active = 1  # the candle view too
    await settle(session)
    issues = check_integrity(list(session.doc.models))
    assert issues.error == [] and issues.warning == []


async def test_history_fills_lines_bands_logos_and_table(session: DashboardSession) -> None:
    assert data(session, "AAPL")["ts"] == [T0, T0 + 1000]
    assert data(session, "INTC")["price"] == [38.0]
    assert list(session.chart.bands.data["symbol"]) == ["AAPL", "INTC"]
    assert list(session.chart.logos.data["ts"]) == [T0, T0]
    assert list(session.ui.table_source.data["symbol"]) == ["AAPL", "INTC"]
    assert session.ui.table_rows.indices == [0, 1]
    assert "connecting" in session.ui.status.text


async def test_ticks_are_streamed_or_patched_never_resent(session: DashboardSession) -> None:
    changes: list[DocumentChangedEvent] = []
    session.doc.on_change(changes.append)
    bucket = session.bucket
    for i in range(1, 301):  # far more than the 50 points a line may keep
        session.deliver(PriceEvent("AAPL", Point(T0 + 1000 + i * bucket, 270.0 + i)))
        session.deliver(PriceEvent("INTC", Point(T0 + 1000 + i * bucket // 2, 38.0)))
        if i % 25 == 0:
            await settle(session)
    await settle(session)

    line_sources = {line.source for line in session.chart.lines.values()}
    touched = [c for c in changes if getattr(c, "model", None) in line_sources]
    assert touched and all(
        isinstance(c, ColumnsStreamedEvent | ColumnsPatchedEvent) for c in touched
    )
    aapl = data(session, "AAPL")
    assert len(aapl["ts"]) == session.rollover == 50  # memory stays bounded
    assert aapl["price"][-1] == 570.0
    assert aapl["ts"] == sorted(aapl["ts"])
    assert session.ui.table_source.data["price"][0] == 570.0
    # the logo rides the line's visible start as the window slides
    start = logo_anchor([int(t) for t in aapl["ts"]], aapl["price"], HOUR_MS)
    assert start is not None and aapl["ts"][-1] - start.ts <= HOUR_MS
    assert list(session.chart.logos.data["ts"])[0] == start.ts


async def test_an_older_tick_is_never_drawn(session: DashboardSession) -> None:
    session.deliver(PriceEvent("AAPL", Point(T0 + 500, 1.0)))
    await settle(session)
    assert data(session, "AAPL")["price"] == [270.0, 271.0]


async def test_ticks_during_a_reload_wait_for_the_history(
    session: DashboardSession, fake_api: FakeApi
) -> None:
    fake_api.series["AAPL"]["ts"].append(T0 + 60_000)
    fake_api.series["AAPL"]["price"].append(280.0)
    session.deliver(ReloadEvent(None))
    session.deliver(PriceEvent("AAPL", Point(T0 + 30_000, 1.0)))  # older than the new history
    session.deliver(PriceEvent("AAPL", Point(T0 + 90_000, 290.0)))
    await settle(session)
    assert data(session, "AAPL")["price"] == [270.0, 271.0, 280.0, 290.0]
    assert len(fake_api.price_requests) == 2


async def test_ticks_during_a_load_in_flight_wait_for_it(
    session: DashboardSession, fake_api: FakeApi
) -> None:
    fake_api.delay = 0.2
    fake_api.series["AAPL"]["ts"].append(T0 + 60_000)
    fake_api.series["AAPL"]["price"].append(280.0)
    session.reload()
    session.deliver(PriceEvent("AAPL", Point(T0 + 90_000, 290.0)))
    await drain(session.doc)
    assert session.phase is Phase.LOADING and data(session, "AAPL")["price"] == [270.0, 271.0]
    await settle(session)
    assert data(session, "AAPL")["price"] == [270.0, 271.0, 280.0, 290.0]


async def test_stock_events_update_bands_logos_and_add_stocks(
    session: DashboardSession, fake_api: FakeApi
) -> None:
    session.deliver(StockEvent(parsed_stock("AAPL", 270.0, week52_high=999.0, logo_url="data:new")))
    session.deliver(StockEvent(parsed_stock("NVDA", 185.0)))
    await settle(session)
    assert list(session.chart.bands.data["high"])[0] == 999.0
    assert list(session.chart.logos.data["url"])[0] == "data:new"
    assert list(session.chart.lines) == ["AAPL", "INTC", "NVDA"]
    assert session.ui.picker.value == ["AAPL", "INTC", "NVDA"]
    assert fake_api.price_requests[-1]["symbols"] == "AAPL,INTC,NVDA"


async def test_status_and_recovery_after_a_failed_load(
    session: DashboardSession, fake_api: FakeApi
) -> None:
    fake_api.fail_prices = True
    session.deliver(StatusEvent(Status.UNREACHABLE))
    session.deliver(ReloadEvent(frozenset({"AAPL"}), start=T0, end=None))
    await settle(session)
    assert 'data-status="unreachable"' in session.ui.status.text
    assert session.phase is Phase.WAITING
    fake_api.fail_prices = False
    session.deliver(StatusEvent(Status.LIVE))
    await settle(session)
    assert 'data-status="live"' in session.ui.status.text and session.phase is Phase.SHOWING
    assert len(fake_api.price_requests) == 3


async def test_unrelated_history_is_not_reloaded(
    session: DashboardSession, fake_api: FakeApi
) -> None:
    session.deliver(ReloadEvent(frozenset({"ZZZ"})))
    session.deliver(ReloadEvent(frozenset({"AAPL"}), start=0, end=1))  # long before the window
    await settle(session)
    assert len(fake_api.price_requests) == 1


async def test_a_flood_of_history_events_makes_few_loads(
    session: DashboardSession, fake_api: FakeApi
) -> None:
    for _ in range(50):  # at once: one load
        session.deliver(ReloadEvent(frozenset({"AAPL"})))
    await settle(session)
    assert len(fake_api.price_requests) == 2
    started = time.monotonic()
    while time.monotonic() - started < 3 * FEED_EVERY:  # spread out: one per FEED_EVERY
        session.deliver(ReloadEvent(frozenset({"INTC"})))
        await drain(session.doc)
        await asyncio.sleep(0.02)
    await settle(session)
    assert 2 + 3 <= len(fake_api.price_requests) <= 2 + 4


async def test_window_mode_and_stock_controls(session: DashboardSession, fake_api: FakeApi) -> None:
    session.ui.window.active = 1  # 1 day
    await settle(session)
    first, second = (int(r["start"]) for r in fake_api.price_requests)
    assert second - first == pytest.approx(-(DAY_MS - 3_600_000), abs=60_000)
    assert session.chart.x_range.follow_interval == DAY_MS
    assert "1 day" in str(session.chart.title_model.text)

    session.ui.mode.active = 1
    line = session.chart.lines["AAPL"]
    assert line.path.glyph.y == "pct" and line.band.glyph.y0 == "low_pct"
    assert session.chart.figure.yaxis[0].formatter.format == "+0.0%"

    session.ui.picker.value = ["INTC"]
    assert not line.path.visible and not line.legend_item.visible
    assert session.chart.lines["INTC"].path.visible
    assert session.ui.table_rows.indices == [1]


async def test_closing_the_tab_unsubscribes(session: DashboardSession) -> None:
    feed = session.runtime.feed
    assert session.deliver in feed._subscribers
    session.close()
    assert session.deliver not in feed._subscribers


async def test_a_tab_that_falls_behind_reloads_instead_of_queueing(
    session: DashboardSession, fake_api: FakeApi
) -> None:
    for i in range(MAX_PENDING + 10):
        session.deliver(PriceEvent("AAPL", Point(T0 + 2000 + i, 1.0)))
    session.deliver(StatusEvent(Status.LIVE))
    assert len(session.inbox.events) <= 12
    await settle(session)
    assert len(fake_api.price_requests) == 2  # it reloaded the window
    assert 'data-status="live"' in session.ui.status.text


async def test_a_malformed_series_leaves_that_line_empty_and_draws_the_rest(
    session: DashboardSession, fake_api: FakeApi
) -> None:
    fake_api.series["AAPL"]["price"] = [270.0]  # two times, one price
    fake_api.series["INTC"]["price"] = [39.0]
    session.deliver(ReloadEvent(None))
    await settle(session)
    assert data(session, "AAPL")["ts"] == []
    assert data(session, "INTC")["price"] == [39.0]
    assert session.phase is Phase.SHOWING


async def test_window_clicks_in_a_hurry_make_one_load(
    session: DashboardSession, fake_api: FakeApi
) -> None:
    for active in (1, 2, 3, 4):  # the window buttons, clicked in a hurry
        session.ui.window.active = active
        await asyncio.sleep(0.05)
    await settle(session)
    assert len(fake_api.price_requests) == 2  # the page's first load, and one for the last click
    year_back = time.time() * 1000 - int(fake_api.price_requests[-1]["start"])
    assert year_back == pytest.approx(365 * DAY_MS, abs=60_000)
    assert session.phase is Phase.SHOWING and session.window == "1y"
    assert session.chart.x_range.follow_interval == 365 * DAY_MS
    assert "1 year" in str(session.chart.title_model.text)


async def test_a_superseded_load_is_cancelled_and_its_request_closed(
    session: DashboardSession, fake_api: FakeApi
) -> None:
    fake_api.delay = 1.5  # long enough to click again meanwhile, shorter than the client's timeout
    session.ui.window.active = 1
    await settle_until(session, lambda: len(fake_api.price_requests) == 2)
    first = session.load
    session.ui.window.active = 2
    await settle_until(session, lambda: len(fake_api.price_requests) == 3)
    assert first is not None and first.cancelled()
    # the API saw the request go, so it can stop the query (not only stop waiting for it)
    await settle_until(session, lambda: fake_api.abandoned == 1)
    await settle(session)
    assert session.phase is Phase.SHOWING and session.window == "1w"


async def test_the_candle_view_loads_bars_and_keeps_the_last_candle_live(
    session: DashboardSession, fake_api: FakeApi
) -> None:
    fake_api.bars["AAPL"] = {
        "symbol": "AAPL",
        "ts": [T0, T0 + 60_000],
        "open": [270.0, 271.0],
        "high": [272.0, 273.0],
        "low": [269.0, 270.5],
        "close": [271.0, 272.5],
        "ticks": [60, 12],
    }
    assert session.candles is None  # made when first shown, not with every page
    session.ui.view.active = 1
    await settle(session)
    chart = session.candles
    assert chart is not None and chart.figure in session.layout.children
    assert chart.figure.visible and not session.chart.figure.visible
    assert fake_api.bar_requests[-1]["symbols"] == "AAPL"
    candles = chart.source.data
    assert list(candles["close"]) == [271.0, 272.5]
    assert list(candles["colour"]) == [UP_COLOUR, UP_COLOUR]

    session.deliver(PriceEvent("AAPL", Point(T0 + 90_000, 268.0)))  # inside the last candle
    session.deliver(PriceEvent("AAPL", Point(T0 + 125_000, 268.5)))  # opens the next one
    await settle(session)
    assert list(candles["low"]) == [269.0, 268.0, 268.5]
    assert list(candles["close"]) == [271.0, 268.0, 268.5]
    assert candles["colour"][1] == DOWN_COLOUR

    session.ui.candle_symbol.value = "INTC"
    await settle(session)
    assert fake_api.bar_requests[-1]["symbols"] == "INTC"
    assert list(chart.source.data["ts"]) == []


async def test_the_export_link_follows_the_picked_stocks_and_with_none_exports_all(
    session: DashboardSession,
) -> None:
    assert "symbols=AAPL%2CINTC" in session.ui.export.text
    session.ui.picker.value = ["INTC"]
    assert session.ui.export.text.count('symbols=INTC"') == 1
    session.ui.picker.value = []
    assert "symbols" not in session.ui.export.text  # the API's default: every stock
    assert "kind=prices" in session.ui.export.text


def test_the_exports_bar_widths_are_the_stored_levels() -> None:
    assert INTERVALS == tuple(level.name for level in LEVELS) and "1m" in INTERVALS
