"""Server-Sent Event frames: one encoder, each event's contract model as JSON on one line."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

from services.api.events import (
    Chunk,
    Unfinished,
    alert_frame,
    encode,
    history_frame,
    market_frame,
    price_frame,
    render,
    stock_frame,
)
from services.api.listener import Broadcaster
from services.api.metrics import ApiMetrics
from services.api.rows import removed_stock, stock_from_row
from services.common.contract import AlertFiring, HistoryPayload, Market, ResetPayload, Stock


def test_each_event_is_one_frame_of_compact_json() -> None:
    price = price_frame("AAPL", 1767625200913, 270.02, 60533)
    history = history_frame(HistoryPayload(symbols=["AAPL", "NVDA"], start=1, end=2))
    reset = encode("reset", ResetPayload(reason="resume point too old", last_event_id=9), 9)

    assert price.data == (
        b'id: 60533\nevent: price\ndata: {"symbol":"AAPL","ts":1767625200913,"price":270.02}\n\n'
    )
    assert history.data == (
        b'event: history\ndata: {"symbols":["AAPL","NVDA"],"start":1,"end":2}\n\n'
    )
    assert reset == (
        b'id: 9\nevent: reset\ndata: {"reason":"resume point too old","last_event_id":9}\n\n'
    )


def test_a_stock_frame_carries_the_stock_resource() -> None:
    updated = datetime(2026, 1, 5, 15, tzinfo=UTC)
    row = {
        "symbol": "GE",
        "name": "GE Aerospace",
        "logo_url": None,
        "week52_high": Decimal("300.5"),
        "week52_low": Decimal("150"),
        "previous_close": None,
        "metadata_updated_at": updated,
        "last_price": 220.0,
        "last_ts": updated,
        "reference": 200.0,
        "source": "alpaca",
        "failover": False,
        "state": "backfilling",
        "progress": 0.25,
        "reason": None,
        "origin": "api",
    }
    frame = stock_frame(stock_from_row(row))  # a mapping with queries.STOCKS' columns

    head, _, data = frame.data.partition(b"data: ")
    assert head == b"event: stock\n" and data.endswith(b"\n\n")
    stock = Stock.model_validate_json(data)
    assert stock.week52_high == 300.5 and stock.metadata_updated_at == updated
    assert (stock.change, stock.change_pct) == (20.0, 10.0)
    assert (stock.source, stock.failover) == ("alpaca", False)
    assert (stock.state, stock.progress, stock.origin) == ("backfilling", 0.25, "api")


def test_a_removed_stock_goes_to_its_streams_and_an_alert_to_every_stream() -> None:
    removed = stock_frame(removed_stock("AMD"))
    firing = AlertFiring(
        firing_id=7,
        alert_id=3,
        symbol="AAPL",
        condition="above",
        value=200.5,
        price=201.0,
        line=200.5,
        ts=1767625200000,
        note="take profit",
        channels=["browser"],
    )
    alert = alert_frame(firing)

    for symbols in (None, frozenset({"AMD"}), frozenset({"GE"})):
        chunk, sent = render([removed, alert], symbols)
        assert chunk is not None
        assert (b"event: stock\n" in chunk.data) == (symbols != frozenset({"GE"}))
        assert sent["alert"] == 1
        _, _, data = alert.data.partition(b"data: ")
        assert AlertFiring.model_validate_json(data) == firing and b"id:" not in alert.data
    _, _, data = removed.data.partition(b"data: ")
    stock = Stock.model_validate_json(data)
    assert (stock.symbol, stock.state, stock.last_price, stock.origin) == (
        "AMD",
        "removed",
        None,
        None,
    )


def test_a_stream_gets_only_its_own_symbols_of_a_history_event() -> None:
    frame = history_frame(HistoryPayload(symbols=["AAPL", "NVDA"], start=1, end=2))

    nvda, nvda_sent = render([frame], frozenset({"NVDA"}))
    other, other_sent = render([frame], frozenset({"GE"}))

    assert nvda is not None
    assert nvda.data == b'event: history\ndata: {"symbols":["NVDA"],"start":1,"end":2}\n\n'
    assert other is None and nvda_sent["history"] == 1 and not other_sent


def test_a_market_event_goes_to_every_stream_without_an_id() -> None:
    market = Market(
        calendar="XNYS",
        timezone="America/New_York",
        is_open=False,
        next_open=datetime(2026, 1, 5, 14, 30, tzinfo=UTC),
        next_close=datetime(2026, 1, 5, 21, tzinfo=UTC),
        extended_hours=False,
        collapse_closed=True,
    )
    frame = market_frame(market)

    some, some_sent = render([frame], frozenset({"GE"}))
    every, every_sent = render([frame], None)

    assert some is not None and every is not None
    assert some.data == every.data == frame.data
    assert frame.data.startswith(b"event: market\ndata: {") and b"\nid:" not in frame.data
    assert Market.model_validate_json(frame.data.split(b"data: ")[1]) == market
    assert some_sent["market"] == every_sent["market"] == 1


async def test_a_batch_is_encoded_once_per_subscription() -> None:
    """Streams of one subscription share one chunk; one still inside its resume overlap gets
    its own, without the ticks it already had; events are counted once per fan-out."""
    metrics = ApiMetrics()
    broadcaster = Broadcaster("postgresql://127.0.0.1/unused", None, metrics)
    every = [broadcaster.subscribe(None, 4) for _ in range(3)]
    ge = broadcaster.subscribe(frozenset({"GE"}), 4)
    behind = broadcaster.subscribe(None, 4)
    for sub in [*every, ge]:
        broadcaster.resume(sub, 10)
    broadcaster.resume(behind, 11)  # its replay went up to 11

    broadcaster.publish([price_frame("AAPL", 1, 1.0, 11), price_frame("GE", 1, 2.0, 12)])
    broadcaster.publish([price_frame("AAPL", 2, 3.0, 13)])
    every_got = [await sub.next_write() for sub in every]
    ge_got, behind_got = await ge.next_write(), await behind.next_write()

    assert every_got[0] and every_got[1] and every_got[2]
    assert every_got[0][0] is every_got[1][0] is every_got[2][0]  # the very same bytes
    assert _ids(every_got[0]) == [11, 12, 13]
    assert _ids(ge_got) == [12]
    assert _ids(behind_got) == [12, 13]
    sent = metrics.registry.get_sample_value(
        "stockstreamer_api_events_sent_total", {"event": "price"}
    )
    assert sent == 3 * 3 + 1 + 2


def _ids(queued: Sequence[Chunk | Unfinished] | None) -> list[int]:
    assert queued is not None
    data = b"".join(c.data for c in queued if isinstance(c, Chunk))
    return [int(i) for i in re.findall(rb"id: (\d+)", data)]
