"""Fixtures of the dashboard tests: a real HTTP stand-in of the API, and dashboard objects."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.common.contract import Stock
from services.common.market import Market
from services.dashboard.metrics import DashboardMetrics
from tests.dashboard.fake_api import FakeApi

T0 = 1_764_000_000_000  # a fixed epoch ms for canned data


def stock(symbol: str, price: float, **extra: Any) -> dict[str, Any]:
    """A `Stock` payload as the API sends it."""
    return {
        "symbol": symbol,
        "name": f"{symbol} Inc.",
        "logo_url": f"data:image/svg+xml,{symbol}",
        "week52_high": price * 1.3,
        "week52_low": price * 0.7,
        "previous_close": price,
        "metadata_updated_at": None,
        "last_price": price,
        "last_ts": T0,
        "change": 0.0,
        "change_pct": 0.0,
        **extra,
    }


def parsed_stock(symbol: str, price: float, **extra: Any) -> Stock:
    """The same stock as the dashboard holds it once parsed."""
    return Stock.model_validate(stock(symbol, price, **extra))


def bare_stock(symbol: str) -> Stock:
    """A stock the API knows nothing else about: every other field null (or its default)."""
    required = [name for name, info in Stock.model_fields.items() if info.is_required()]
    fields = {**dict.fromkeys(required), "symbol": symbol, "failover": False}
    return Stock.model_validate(fields)


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi(stocks=[stock("AAPL", 270.0), stock("INTC", 38.0)])
    api.series = {
        "AAPL": {
            "symbol": "AAPL",
            "ts": [T0, T0 + 1000],
            "price": [270.0, 271.0],
            "downsampled": False,
            "bucket_ms": None,
        },
        "INTC": {
            "symbol": "INTC",
            "ts": [T0],
            "price": [38.0],
            "downsampled": False,
            "bucket_ms": None,
        },
    }
    api.start()
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def metrics() -> DashboardMetrics:
    return DashboardMetrics(CollectorRegistry())


def ms(at: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return int(at.timestamp() * 1000)


def session_table(calendar: str, start: datetime, end: datetime, **options: Any) -> list[list[int]]:
    """The open intervals of a real exchange calendar, as the API sends them."""
    return [[ms(a), ms(b)] for a, b in Market(calendar, **options).sessions(start, end)]


def market_payload(
    calendar: str, at: datetime, collapse_closed: bool = True, **options: Any
) -> dict[str, Any]:
    """A `Market` body for a real calendar's state at `at`."""
    state = Market(calendar, **options).state(at)
    return {
        "calendar": state.calendar,
        "timezone": state.timezone,
        "is_open": state.is_open,
        "next_open": state.next_open and state.next_open.isoformat(),
        "next_close": state.next_close and state.next_close.isoformat(),
        "extended_hours": bool(options.get("extended_hours")),
        "collapse_closed": collapse_closed,
    }
