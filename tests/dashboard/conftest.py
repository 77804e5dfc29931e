"""Fixtures of the dashboard tests: a real HTTP stand-in of the API, and dashboard objects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.common.contract import Stock
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
    """A stock the API knows nothing else about: every other field null."""
    fields = {**dict.fromkeys(Stock.model_fields), "symbol": symbol, "failover": False}
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
