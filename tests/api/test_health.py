"""Health, readiness, Prometheus metrics, CORS and the OpenAPI document."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import httpx

from tests.utils.api import T0, Market, ThreadedApi, open_stream
from tests.utils.waiting import eventually


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


async def test_metrics_by_route_and_status(
    api: ThreadedApi, client: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("AAPL")
    await client.get("/api/v1/stocks/AAPL")
    await client.get("/api/v1/stocks/ZZZ")
    await client.get("/no/such/path")
    async with open_stream(client) as stream:
        await market.ticks([("AAPL", T0, 1), ("AAPL", T0 + timedelta(seconds=1), 2)])
        await stream.prices(2)
        text = (await client.get("/metrics")).text
    assert (
        'stockstreamer_api_request_seconds_count{method="GET",route="/api/v1/stocks/{symbol}",'
        'status="200"} 1.0' in text
    )
    assert 'route="/api/v1/stocks/{symbol}",status="404"} 1.0' in text
    assert 'route="unmatched",status="404"} 1.0' in text
    assert "stockstreamer_api_open_streams 1.0" in text
    assert 'stockstreamer_api_events_sent_total{event="price"} 2.0' in text
    assert "stockstreamer_api_slow_client_disconnects_total 0.0" in text
    assert "stockstreamer_api_listener_up 1.0" in text
    assert 'stockstreamer_api_notifications_total{channel="prices"}' in text
    await eventually(lambda: api.metric("stockstreamer_api_open_streams") == 0)


async def test_api_connects_as_the_editor_role(api: ThreadedApi) -> None:
    # The editor writes the watchlist and alerts (their tests), and nothing else.
    refused = (
        "INSERT INTO stocks (symbol) VALUES ('NOPE')",
        "DELETE FROM ticks",
        "UPDATE alerts SET armed = false",
        "INSERT INTO alert_channels (name) VALUES ('phone')",
        "INSERT INTO alert_firings (alert_id, price, line, tick_ts) VALUES (1, 1, 1, now())",
    )

    async def probe() -> tuple[str, list[str]]:
        found = []
        async with api.app.state.pool.acquire() as conn:
            user = await conn.fetchval("SELECT current_user")
            for statement in refused:
                try:
                    await conn.execute(statement)
                except asyncpg.InsufficientPrivilegeError as exc:
                    found.append(type(exc).__name__)
                else:
                    found.append(f"wrote: {statement}")
        return user, found

    user, found = api.run(probe())
    assert user == "stockstreamer_editor"
    assert found == ["InsufficientPrivilegeError"] * len(refused)


async def test_cors_allow_list(database_url: str, market: Market) -> None:
    await market.stocks("AAPL")
    api = ThreadedApi(
        database_url, cors_origins="http://localhost:5006, https://ticker.example/"
    ).start()
    try:
        async with httpx.AsyncClient(base_url=api.url) as client:
            # a stream's headers pass every middleware; its live chunks go straight out
            async with open_stream(client, Origin="https://ticker.example") as stream:
                await market.ticks([("AAPL", T0, 1)])
                (price,) = await stream.prices(1)
            streamed = stream.response.headers["access-control-allow-origin"]
            allowed = await client.get("/healthz", headers={"Origin": "https://ticker.example"})
            other = await client.get("/healthz", headers={"Origin": "https://evil.example"})
            preflight = await client.options(
                "/api/v1/stream",
                headers={
                    "Origin": "http://localhost:5006",
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "last-event-id",
                },
            )
    finally:
        api.stop()
    assert allowed.headers["access-control-allow-origin"] == "https://ticker.example"
    assert streamed == "https://ticker.example" and price.data["symbol"] == "AAPL"
    assert "access-control-allow-origin" not in other.headers
    assert preflight.status_code == 200
    assert "last-event-id" in preflight.headers["access-control-allow-headers"].lower()


async def test_openapi_documents_every_endpoint(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert set(spec["paths"]) == {
        "/api/v1/stocks",
        "/api/v1/stocks/{symbol}",
        "/api/v1/stocks/{symbol}/logo",
        "/api/v1/stocks/{symbol}/highlow",
        "/api/v1/alerts",
        "/api/v1/alerts/{alert_id}",
        "/api/v1/alerts/{alert_id}/events",
        "/api/v1/prices",
        "/api/v1/prices/latest",
        "/api/v1/bars",
        "/api/v1/prices.csv",
        "/api/v1/bars.csv",
        "/api/v1/market",
        "/api/v1/market/sessions",
        "/api/v1/stream",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    paths = spec["paths"]
    assert set(paths["/api/v1/stocks"]) == {"get", "post"}
    assert set(paths["/api/v1/stocks/{symbol}"]) == {"get", "delete"}
    assert set(paths["/api/v1/alerts"]) == {"get", "post"}
    assert set(paths["/api/v1/alerts/{alert_id}"]) == {"get", "delete"}
    for path, method, done in (
        ("/api/v1/stocks", "post", "202"),
        ("/api/v1/stocks/{symbol}", "delete", "204"),
        ("/api/v1/alerts", "post", "201"),
        ("/api/v1/alerts/{alert_id}", "delete", "204"),
    ):
        assert {done, "401", "403", "413", "422"} <= set(paths[path][method]["responses"]), path
    stream = spec["paths"]["/api/v1/stream"]["get"]["responses"]["200"]["content"]
    assert "text/event-stream" in stream
    for export in ("/api/v1/prices.csv", "/api/v1/bars.csv"):
        answers = spec["paths"][export]["get"]["responses"]
        assert list(answers["200"]["content"]) == ["text/csv"]
        assert answers["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/Problem")
    prices = spec["paths"]["/api/v1/prices"]["get"]["responses"]
    assert prices["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/Problem")
    sessions = spec["paths"]["/api/v1/market/sessions"]["get"]["responses"]
    assert sessions["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Sessions")
    assert sessions["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/Problem")
