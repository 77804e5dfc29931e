"""The REST client against a real HTTP server speaking the API contract."""

from __future__ import annotations

import pytest

from services.dashboard.client import ApiClient, ApiError
from services.dashboard.metrics import DashboardMetrics
from services.runner.embedded_db import free_port
from tests.dashboard.conftest import T0
from tests.dashboard.fake_api import FakeApi


async def test_prices_sends_the_window_and_reads_the_series(
    fake_api: FakeApi, metrics: DashboardMetrics
) -> None:
    client = ApiClient(fake_api.url + "/", 2.0, metrics)
    try:
        data = await client.prices(["AAPL", "INTC"], T0 - 3_600_000, None, 500)
        stocks = await client.stocks()
    finally:
        await client.aclose()
    assert fake_api.price_requests == [
        {"symbols": "AAPL,INTC", "start": str(T0 - 3_600_000), "max_points": "500"}
    ]
    assert [s.symbol for s in data.series] == ["AAPL", "INTC"]
    assert [s.symbol for s in stocks] == ["AAPL", "INTC"]
    ok = metrics.registry.get_sample_value(
        "stockstreamer_dashboard_api_requests_total",
        {"endpoint": "/api/v1/prices", "outcome": "ok"},
    )
    assert ok == 1


async def test_errors_become_api_errors(fake_api: FakeApi, metrics: DashboardMetrics) -> None:
    fake_api.fail_prices = True
    client = ApiClient(fake_api.url, 2.0, metrics)
    down = ApiClient(f"http://127.0.0.1:{free_port()}", 2.0, metrics)
    try:
        with pytest.raises(ApiError, match="503"):
            await client.prices(["AAPL"], T0, T0 + 1, 10)
        with pytest.raises(ApiError, match="ConnectError"):
            await down.stocks()
    finally:
        await client.aclose()
        await down.aclose()


async def test_more_symbols_than_one_request_takes_are_asked_in_chunks(
    fake_api: FakeApi, metrics: DashboardMetrics
) -> None:
    symbols = [f"S{i:03d}" for i in range(120)]
    client = ApiClient(fake_api.url, 2.0, metrics)
    try:
        body = await client.prices(symbols, T0, None, 100)
    finally:
        await client.aclose()
    asked = [r["symbols"].split(",") for r in fake_api.price_requests]
    assert [len(chunk) for chunk in asked] == [50, 50, 20]
    assert [s.symbol for s in body.series] == symbols


async def test_history_for_a_viewer_names_the_viewer_to_the_api(
    fake_api: FakeApi, metrics: DashboardMetrics
) -> None:
    client = ApiClient(fake_api.url, 2.0, metrics)
    try:
        await client.prices(["AAPL"], T0, None, 10, client="203.0.113.7")
        await client.bars("AAPL", T0, 10, client="2001:db8::1")
        await client.prices(["AAPL"], T0, None, 10)  # the dashboard's own: no header
    finally:
        await client.aclose()
    assert fake_api.forwarded_for == ["203.0.113.7", "2001:db8::1", None]
