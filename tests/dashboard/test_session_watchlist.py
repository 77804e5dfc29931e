"""A tab and the watchlist: symbols coming and going, adding and removing them, alerts firing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from bokeh.core.property.vectorization import Value
from bokeh.core.validation.check import check_integrity
from bokeh.document import Document
from bokeh.document.events import (
    ColumnsStreamedEvent,
    DocumentChangedEvent,
    DocumentPatchedEvent,
)
from bokeh.events import ButtonClick
from bokeh.models.annotations.legends import Legend, LegendItem
from bokeh.models.widgets.buttons import Button
from bokeh.protocol import Protocol

from services.common.clients import TrustedProxies
from services.common.contract import Stock
from services.dashboard.alerts import SHOWN, Firing
from services.dashboard.client import ApiClient
from services.dashboard.config import DashboardSettings
from services.dashboard.feed import AlertEvent, Feed, PriceEvent, RemovedEvent, StockEvent
from services.dashboard.metrics import DashboardMetrics
from services.dashboard.runtime import Runtime
from services.dashboard.session import DashboardSession
from services.dashboard.shaping import PALETTE, Point
from services.dashboard.watchlist import Watch
from tests.dashboard.conftest import T0, bare_stock, parsed_stock
from tests.dashboard.fake_api import FakeApi
from tests.dashboard.test_session import FEED_EVERY, ready, settle, settle_until

TOKEN = "a-dashboard-token-of-some-length"
VIEWER = "203.0.113.7"


def make_runtime(fake_api: FakeApi, metrics: DashboardMetrics, token: str | None) -> Runtime:
    settings = DashboardSettings(
        api_url=fake_api.url, dashboard_max_points=50, dashboard_api_token=token
    )
    client = ApiClient(fake_api.url, 2.0, metrics)
    feed = Feed(client, metrics, 1.0)
    for item in fake_api.stocks:
        feed.stocks[item["symbol"]] = Stock.model_validate(item)
        feed.watch[item["symbol"]] = Watch(symbol=item["symbol"], origin="config")
    return Runtime(settings, metrics, client, feed, TrustedProxies([]))


async def open_page(runtime: Runtime) -> DashboardSession:
    s = DashboardSession(Document(), runtime, client=VIEWER)
    s.feed_reload_every = FEED_EVERY
    ready(s)
    await settle(s)
    return s


@pytest.fixture
async def session(fake_api: FakeApi, metrics: DashboardMetrics) -> AsyncIterator[DashboardSession]:
    runtime = make_runtime(fake_api, metrics, TOKEN)
    s = await open_page(runtime)
    yield s
    s.close()
    await runtime.client.aclose()


@pytest.fixture
async def read_only(
    fake_api: FakeApi, metrics: DashboardMetrics
) -> AsyncIterator[DashboardSession]:
    runtime = make_runtime(fake_api, metrics, None)
    s = await open_page(runtime)
    yield s
    s.close()
    await runtime.client.aclose()


def amd(state: str, **extra: Any) -> StockEvent:
    """A stock event of AMD, added through the API, in `state`."""
    return StockEvent(bare_stock("AMD"), Watch(symbol="AMD", state=state, origin="api", **extra))


class Mirror:
    """The document as a browser has it: as it was sent first, then every change as sent."""

    def __init__(self, doc: Document) -> None:
        self.doc = Document.from_json(doc.to_json())
        self.protocol = Protocol()
        doc.on_change(self._sent)

    def _sent(self, event: DocumentChangedEvent) -> None:
        if isinstance(event, DocumentPatchedEvent):  # what the server sends, the way it does
            self.protocol.create("PATCH-DOC", [event]).apply_to_document(self.doc)


def entry(s: DashboardSession, symbol: str) -> str:
    return str(s.watchlist.entries[symbol].label.text)


def click(s: DashboardSession, button: Button) -> None:
    """What the browser sends when the button is clicked."""
    s.doc.callbacks.trigger_event(ButtonClick(button))


def renderer_names(s: DashboardSession) -> set[str]:
    return {str(r.name) for r in s.chart.figure.renderers}


async def test_every_symbol_is_listed_with_its_state(session: DashboardSession) -> None:
    assert list(session.watchlist.entries) == ["AAPL", "INTC"]
    assert "data-state='live'" in entry(session, "AAPL")
    # configured ones say why they have no remove button
    assert "STOCKSTREAMER_SYMBOLS" in entry(session, "AAPL")
    assert session.watchlist.entries["AAPL"].remove is None
    assert session.watchlist.symbol.visible and session.watchlist.add.visible
    assert session.watchlist.note.text == ""


async def test_a_new_symbol_is_listed_then_drawn_once_it_has_data(
    session: DashboardSession, fake_api: FakeApi
) -> None:
    loads = len(fake_api.price_requests)
    session.deliver(amd("pending"))
    await settle(session)
    assert "data-state='pending'" in entry(session, "AMD")
    assert "AMD" not in session.chart.lines and len(fake_api.price_requests) == loads
    assert session.watchlist.entries["AMD"].remove is not None

    fake_api.series["AMD"] = {
        "symbol": "AMD",
        "ts": [T0],
        "price": [150.0],
        "downsampled": False,
        "bucket_ms": None,
    }
    session.deliver(amd("backfilling", progress=0.42))
    await settle(session)
    assert "backfilling 42 %" in entry(session, "AMD")
    assert list(session.chart.lines) == ["AAPL", "INTC", "AMD"]
    assert fake_api.price_requests[-1]["symbols"] == "AAPL,INTC,AMD"  # its history, loaded
    assert list(session.chart.lines["AMD"].source.data["price"]) == [150.0]
    assert session.ui.picker.value == ["AAPL", "INTC", "AMD"]

    loads = len(fake_api.price_requests)
    session.deliver(amd("live"))
    await settle(session)
    assert "data-state='live'" in entry(session, "AMD")
    assert len(fake_api.price_requests) == loads + 1  # all of its history, once backfilled


async def test_a_rejected_symbol_is_listed_with_the_reason_and_never_drawn(
    session: DashboardSession,
) -> None:
    session.deliver(amd("rejected", reason="unknown symbol"))
    await settle(session)
    assert "rejected: unknown symbol" in entry(session, "AMD")
    assert "AMD" not in session.chart.lines and "AMD" not in session.ui.picker.options


async def test_a_removed_symbol_leaves_the_page_at_once(session: DashboardSession) -> None:
    session.deliver(PriceEvent("AAPL", Point(T0 + 5000, 275.0)))
    await settle(session)
    session.ui.candle_symbol.value = "INTC"
    session.deliver(RemovedEvent("INTC"))
    session.deliver(PriceEvent("INTC", Point(T0 + 6000, 40.0)))  # late: drawn nowhere
    await settle(session)
    assert list(session.chart.lines) == ["AAPL"] and "INTC" not in session.watchlist.entries
    assert not {n for n in renderer_names(session) if "INTC" in n}
    assert [i.label.value for i in session.chart.legend.items] == ["AAPL"]  # type: ignore[union-attr]
    assert list(session.chart.bands.data["symbol"]) == ["AAPL"]
    assert list(session.chart.logos.data["symbol"]) == ["AAPL"]
    assert list(session.ui.table_source.data["symbol"]) == ["AAPL"]
    assert session.ui.table_source.data["price"][0] == 275.0  # the others keep their prices
    assert session.ui.table_rows.indices == [0]
    assert session.ui.picker.options == ["AAPL"] and session.ui.picker.value == ["AAPL"]
    assert session.ui.candle_symbol.value == "AAPL"
    issues = check_integrity(list(session.doc.models))
    assert issues.error == [] and issues.warning == []

    # back again: a line of its own colour, not one another line has
    session.deliver(StockEvent(parsed_stock("INTC", 38.0), Watch(symbol="INTC", origin="api")))
    await settle(session)
    colours = [line.colour for line in session.chart.lines.values()]
    assert colours == [PALETTE[0], PALETTE[1]] and "INTC" in session.watchlist.entries


async def test_the_browser_gets_all_of_a_symbol_added_while_it_shows_the_page(
    session: DashboardSession,
) -> None:
    browser = Mirror(session.doc)
    session.deliver(amd("pending"))
    await settle(session)
    session.deliver(amd("live"))
    await settle(session)
    remove = browser.doc.get_model_by_name("remove_AMD")
    assert remove is not None and "button_click" in remove.subscribed_events  # clicks get here
    line = browser.doc.get_model_by_name("line_AMD")
    assert line is not None and line.js_property_callbacks  # a legend click hides its frame
    legend = browser.doc.get_model_by_name("legend")
    assert isinstance(legend, Legend)
    labels = [item.label for item in legend.items if isinstance(item, LegendItem)]
    assert [label.value for label in labels if isinstance(label, Value)] == ["AAPL", "INTC", "AMD"]
    session.deliver(RemovedEvent("AMD"))
    await settle(session)
    assert browser.doc.get_model_by_name("line_AMD") is None
    assert browser.doc.get_model_by_name("remove_AMD") is None


async def test_adding_through_the_page_calls_the_api_with_the_token(
    session: DashboardSession, fake_api: FakeApi
) -> None:
    panel = session.watchlist
    panel.symbol.value = " amd "
    click(session, panel.add)
    await settle_until(session, lambda: "added" in panel.message.text)
    (write,) = fake_api.writes
    assert (write.method, write.path, write.body) == ("POST", "/api/v1/stocks", {"symbol": "AMD"})
    assert write.authorization == f"Bearer {TOKEN}" and write.forwarded_for == VIEWER
    assert panel.symbol.value == "" and not panel.add.disabled
    assert TOKEN not in str([m.properties_with_values() for m in session.doc.models])

    fake_api.write_answers = [(409, {"detail": "at most 50 symbols are tracked"})]
    panel.symbol.value = "NVDA"
    click(session, panel.add)
    await settle_until(session, lambda: "not added" in panel.message.text)
    assert "at most 50 symbols are tracked (409)" in panel.message.text
    assert "data-kind='error'" in panel.message.text and panel.symbol.value == "NVDA"


async def test_removing_through_the_page_calls_the_api_then_the_event_removes_it(
    session: DashboardSession, fake_api: FakeApi
) -> None:
    session.deliver(amd("live"))
    await settle(session)
    remove = session.watchlist.entries["AMD"].remove
    assert remove is not None
    click(session, remove)
    await settle_until(session, lambda: "AMD removed" in session.watchlist.message.text)
    (write,) = fake_api.writes
    assert (write.method, write.path, write.authorization) == (
        "DELETE",
        "/api/v1/stocks/AMD",
        f"Bearer {TOKEN}",
    )
    assert "AMD" in session.chart.lines  # until the stream says it is gone, in every tab
    session.deliver(RemovedEvent("AMD"))
    await settle(session)
    assert "AMD" not in session.chart.lines and "AMD" not in session.watchlist.entries


async def test_a_refused_remove_says_why(session: DashboardSession, fake_api: FakeApi) -> None:
    session.deliver(amd("live"))
    await settle(session)
    fake_api.write_answers = [(409, {"detail": "AMD is set in STOCKSTREAMER_SYMBOLS"})]
    remove = session.watchlist.entries["AMD"].remove
    assert remove is not None
    click(session, remove)
    await settle_until(session, lambda: "not removed" in session.watchlist.message.text)
    assert "AMD is set in STOCKSTREAMER_SYMBOLS (409)" in session.watchlist.message.text
    assert not remove.disabled and "AMD" in session.chart.lines


async def test_an_unreachable_api_is_said_next_to_the_input(
    session: DashboardSession, fake_api: FakeApi
) -> None:
    fake_api.stop()
    session.watchlist.symbol.value = "AMD"
    click(session, session.watchlist.add)
    await settle_until(session, lambda: "not added" in session.watchlist.message.text)
    assert "cannot be reached" in session.watchlist.message.text
    fake_api.start()


async def test_without_a_token_the_page_only_shows(
    read_only: DashboardSession, fake_api: FakeApi
) -> None:
    panel = read_only.watchlist
    assert not panel.symbol.visible and not panel.add.visible
    assert "STOCKSTREAMER_DASHBOARD_API_TOKEN_FILE" in panel.note.text
    read_only.deliver(amd("live"))
    await settle(read_only)
    assert panel.entries["AMD"].remove is None
    assert "STOCKSTREAMER_SYMBOLS" not in entry(read_only, "AAPL")
    panel.symbol.value = "AMD"
    click(read_only, panel.add)  # a forged click
    await settle(read_only)
    assert fake_api.writes == []


def alert(firing_id: int, **extra: Any) -> AlertEvent:
    fields: dict[str, Any] = {
        "firing_id": firing_id,
        "alert_id": 1,
        "symbol": "AAPL",
        "condition": "above",
        "value": 271.0,
        "price": 271.5,
        "line": 271.0,
        "ts": T0,
        "note": "take profit",
        "channels": ["browser"],
    }
    return AlertEvent(Firing.model_validate({**fields, **extra}))


async def test_alerts_are_listed_newest_first_once_each_and_told_to_the_browser(
    session: DashboardSession,
) -> None:
    streamed: list[DocumentChangedEvent] = []
    session.doc.on_change(streamed.append)
    session.deliver(alert(1))
    session.deliver(alert(1))  # the same firing again
    session.deliver(alert(2, symbol="INTC", condition="below", line=30.0, price=29.9, note=None))
    await settle(session)
    text = session.alerts.list.text
    assert text.index("data-firing='2'") < text.index("data-firing='1'")
    assert text.count("data-firing='1'") == 1
    assert "AAPL above 271.00" in text and "take profit" in text
    source = session.alerts.source
    assert list(source.data["firing_id"]) == [1, 2]
    notified = [e for e in streamed if isinstance(e, ColumnsStreamedEvent) and e.model is source]
    assert len(notified) == 2  # one stream a firing: the browser's notification hook, once each

    for i in range(3, 3 + SHOWN + 5):
        session.deliver(alert(i))
    await settle(session)
    assert session.alerts.list.text.count("<li") == SHOWN  # bounded
    assert len(source.data["firing_id"]) == SHOWN


async def test_a_page_opened_later_lists_the_recent_alerts(
    fake_api: FakeApi, metrics: DashboardMetrics
) -> None:
    runtime = make_runtime(fake_api, metrics, None)
    runtime.feed.firings.extend([alert(7).firing, alert(8).firing])
    s = await open_page(runtime)
    try:
        text = s.alerts.list.text
        assert text.index("data-firing='8'") < text.index("data-firing='7'")
        assert list(s.alerts.source.data["firing_id"]) == []  # old news: no notification
        s.deliver(alert(8))
        await settle(s)
        assert s.alerts.list.text.count("data-firing='8'") == 1
    finally:
        s.close()
        await runtime.client.aclose()
