"""The REST client against a real HTTP server speaking the API contract."""

from __future__ import annotations

import pytest

from services.dashboard.client import ApiClient, ApiError
from services.dashboard.metrics import DashboardMetrics
from services.runner.embedded_db import free_port
from tests.dashboard.conftest import T0, stock
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
    assert [(s.symbol, w.state) for s, w in stocks] == [("AAPL", "live"), ("INTC", "live")]
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


TOKEN = "a-dashboard-token-of-some-length"


async def test_writes_carry_the_token_and_the_viewer(
    fake_api: FakeApi, metrics: DashboardMetrics
) -> None:
    client = ApiClient(fake_api.url, 2.0, metrics)
    try:
        added = await client.add_stock("AMD", TOKEN, client="203.0.113.7")
        removed = await client.remove_stock("AMD", TOKEN)
    finally:
        await client.aclose()
    assert (added.ok, added.status, removed.ok, removed.status) == (True, 202, True, 204)
    post, delete = fake_api.writes
    assert (post.method, post.path, post.body) == ("POST", "/api/v1/stocks", {"symbol": "AMD"})
    assert (delete.method, delete.path, delete.body) == ("DELETE", "/api/v1/stocks/AMD", None)
    assert post.authorization == delete.authorization == f"Bearer {TOKEN}"
    assert (post.forwarded_for, delete.forwarded_for) == ("203.0.113.7", None)


async def test_a_refused_write_says_why_in_the_apis_words(
    fake_api: FakeApi, metrics: DashboardMetrics
) -> None:
    fake_api.write_answers = [
        (409, {"detail": "AAPL is set in STOCKSTREAMER_SYMBOLS"}),
        (422, {"detail": [{"loc": ["body", "symbol"], "msg": "symbol: not a ticker"}]}),
        (502, None),
    ]
    client = ApiClient(fake_api.url, 2.0, metrics)
    down = ApiClient(f"http://127.0.0.1:{free_port()}", 2.0, metrics)
    try:
        conflict = await client.remove_stock("AAPL", TOKEN)
        invalid = await client.add_stock("no way", TOKEN)
        bad_gateway = await client.add_stock("AMD", TOKEN)
        with pytest.raises(ApiError, match="ConnectError"):
            await down.add_stock("AMD", TOKEN)
    finally:
        await client.aclose()
        await down.aclose()
    assert (conflict.ok, conflict.status) == (False, 409)
    assert conflict.detail == "AAPL is set in STOCKSTREAMER_SYMBOLS"
    assert (invalid.status, invalid.detail) == (422, "symbol: not a ticker")
    assert (bad_gateway.status, bad_gateway.detail) == (502, "502 Bad Gateway")
    assert fake_api.writes[1].body == {"symbol": "no way"}  # the API judges it, not us


async def test_the_watchlist_fields_come_with_the_stocks(
    fake_api: FakeApi, metrics: DashboardMetrics
) -> None:
    fake_api.stocks = [
        stock("AAPL", 270.0, state="live", origin="config"),
        {**dict.fromkeys(("name", "logo_url", "week52_high", "week52_low")), "symbol": "AMD"}
        | {"previous_close": None, "metadata_updated_at": None, "last_price": None}
        | {"last_ts": None, "change": None, "change_pct": None}
        | {"state": "backfilling", "progress": 0.25, "reason": None, "origin": "api"},
    ]
    client = ApiClient(fake_api.url, 2.0, metrics)
    try:
        listed = await client.stocks()
    finally:
        await client.aclose()
    watches = [w for _, w in listed]
    assert [(w.symbol, w.state, w.origin) for w in watches] == [
        ("AAPL", "live", "config"),
        ("AMD", "backfilling", "api"),
    ]
    assert watches[1].progress == 0.25 and watches[1].drawn
