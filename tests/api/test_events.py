"""Server-Sent Event frames: one encoder, each event's contract model as JSON on one line."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal

from services.api.events import Subscriber, encode, history_frame, market_frame, price_frame
from services.api.listener import stock_frame
from services.common.contract import HistoryPayload, Market, ResetPayload, Stock


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
    }
    frame = stock_frame(row)  # type: ignore[arg-type]  # a mapping with queries.STOCKS' columns

    head, _, data = frame.data.partition(b"data: ")
    assert head == b"event: stock\n" and data.endswith(b"\n\n")
    stock = Stock.model_validate_json(data)
    assert stock.week52_high == 300.5 and stock.metadata_updated_at == updated
    assert (stock.change, stock.change_pct) == (20.0, 10.0)
    assert (stock.source, stock.failover) == ("alpaca", False)


def test_a_stream_gets_only_its_own_symbols_of_a_history_event() -> None:
    frame = history_frame(HistoryPayload(symbols=["AAPL", "NVDA"], start=1, end=2))
    sent: Counter[str] = Counter()

    nvda = Subscriber(frozenset({"NVDA"}), capacity=4).render([frame], sent)
    other = Subscriber(frozenset({"GE"}), capacity=4).render([frame], sent)

    assert nvda == b'event: history\ndata: {"symbols":["NVDA"],"start":1,"end":2}\n\n'
    assert other == b"" and sent == Counter(history=1)


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
    sent: Counter[str] = Counter()

    some = Subscriber(frozenset({"GE"}), capacity=4).render([frame], sent)
    every = Subscriber(None, capacity=4).render([frame], sent)

    assert some == every == frame.data
    assert frame.data.startswith(b"event: market\ndata: {") and b"\nid:" not in frame.data
    assert Market.model_validate_json(frame.data.split(b"data: ")[1]) == market
    assert sent["market"] == 2
