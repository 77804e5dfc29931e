"""Alerts through the API: created, read and deleted; their firings as events and on the stream."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta
from typing import Any

import asyncpg
import httpx

from tests.api.conftest import TOKEN
from tests.utils.api import T0, Market, ThreadedApi, open_stream

ALERT = {"symbol": "AAPL", "condition": "above", "value": 200.5, "channels": ["browser"]}

# What the alerts service writes (its own statements live in services/alerts).
CHANNEL = "INSERT INTO alert_channels (name) VALUES ($1)"
FIRING = """
INSERT INTO alert_firings (alert_id, price, line, tick_event_id, tick_ts, fired_at)
VALUES ($1, $2, $3, $4, $5, $6) RETURNING id
"""
DELIVERY = """
INSERT INTO alert_deliveries (firing_id, channel, attempt, result, detail, at)
VALUES ($1, $2, $3, $4, $5, $6)
"""


async def create(writer: httpx.AsyncClient, **changes: Any) -> dict[str, Any]:
    response = await writer.post("/api/v1/alerts", json={**ALERT, **changes})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_an_alert_is_created_at_its_location_and_announced(
    writer: httpx.AsyncClient, writable: ThreadedApi, db: asyncpg.Connection, database_url: str
) -> None:
    await db.execute(CHANNEL, "phone")
    listener = await asyncpg.connect(database_url)
    try:
        notified: asyncio.Queue[str] = asyncio.Queue()
        await listener.add_listener("alerts", lambda *args: notified.put_nowait(str(args[-1])))
        response = await writer.post(
            "/api/v1/alerts",
            json={
                "symbol": "aapl",
                "condition": "below",
                "value": 180,
                "channels": ["phone", "browser", "phone"],
                "note": "buy the dip",
            },
        )
        payload = await asyncio.wait_for(notified.get(), 5)
    finally:
        await listener.close()

    assert response.status_code == 201
    alert = response.json()
    assert response.headers["location"] == f"/api/v1/alerts/{alert['id']}"
    assert payload == str(alert["id"])
    assert {k: v for k, v in alert.items() if k not in ("id", "created_at")} == {
        "symbol": "AAPL",
        "condition": "below",
        "value": 180,
        "channels": ["phone", "browser"],
        "note": "buy the dip",
        "armed": True,
        "fired": 0,
    }
    assert (await writer.get(response.headers["location"])).json() == alert
    change = await create(writer, condition="change_pct", value=-2.5, channels=["phone"])
    assert [a["id"] for a in (await writer.get("/api/v1/alerts")).json()] == [
        alert["id"],
        change["id"],
    ]
    assert writable.metric("stockstreamer_api_alert_changes_total", change="created") == 2
    without_channels = await writer.post(
        "/api/v1/alerts", json={"symbol": "NVDA", "condition": "above", "value": 1}
    )
    assert without_channels.json()["channels"] == ["browser"]  # the default


async def test_every_bad_alert_is_a_4xx_naming_the_field(writer: httpx.AsyncClient) -> None:
    bad: list[tuple[dict[str, Any] | str, str]] = [
        ({"symbol": "1ABC"}, "body field 'symbol': "),
        ({"symbol": "A" * 20}, "body field 'symbol': "),
        ({"condition": "sideways"}, "body field 'condition': "),
        ({"value": 0}, "body field 'value': "),
        ({"value": -3}, "body field 'value': "),
        ({"condition": "below", "value": -0.01}, "body field 'value': "),
        ({"value": "NaN"}, "body field 'value': "),
        ({"value": 1e300}, "body field 'value': "),
        ({"value": "lots"}, "body field 'value': "),
        ({"channels": []}, "body field 'channels': "),
        ({"channels": ["Phone!"]}, "body field 'channels[0]': "),
        ({"channels": ["phone"]}, "body field 'channels': unknown channel(s) phone"),
        ({"note": "x" * 501}, "body field 'note': "),
        ('{"symbol": "AAPL", "condition": "above", "value": NaN}', "body field 'value': "),
        ('{"symbol": "AAPL", "condition": "above", "value": Infinity}', "body field 'value': "),
    ]
    for change, detail in bad:
        if isinstance(change, str):
            response = await writer.post(
                "/api/v1/alerts", content=change, headers={"Content-Type": "application/json"}
            )
        else:
            response = await writer.post("/api/v1/alerts", json={**ALERT, **change})
        assert response.status_code == 422, change
        assert response.json()["detail"].startswith(detail), (change, response.json())
    missing = await writer.post("/api/v1/alerts", json={"symbol": "AAPL"})
    assert "body field 'condition': Field required" in missing.json()["detail"]
    assert "body field 'value': Field required" in missing.json()["detail"]
    huge = await writer.post("/api/v1/alerts", json={**ALERT, "note": "x" * 5000})
    assert huge.status_code == 413
    assert (await writer.get("/api/v1/alerts")).json() == []
    # a move in percent may be negative or tiny, as a price may not
    assert (await create(writer, condition="change_pct", value=-0.5))["value"] == -0.5
    assert math.isclose((await create(writer, value=1e-6))["value"], 1e-6)


async def test_unknown_alerts_are_404_and_malformed_ids_422(writer: httpx.AsyncClient) -> None:
    for method, path in (
        ("GET", "/api/v1/alerts/99"),
        ("DELETE", "/api/v1/alerts/99"),
        ("GET", "/api/v1/alerts/99/events"),
    ):
        response = await writer.request(method, path)
        assert response.status_code == 404, path
        assert response.json() == {"detail": "unknown alert 99"}
    for path in ("/api/v1/alerts/abc", "/api/v1/alerts/0", "/api/v1/alerts/-1"):
        response = await writer.get(path)
        assert response.status_code == 422, path
        assert response.json()["detail"].startswith("path parameter 'alert_id': ")


async def test_a_deleted_alert_is_gone_but_its_events_stay(
    writer: httpx.AsyncClient, writable: ThreadedApi, db: asyncpg.Connection
) -> None:
    alert = await create(writer)
    kept = await create(writer, value=300)
    await db.fetchval(FIRING, alert["id"], 201.0, 200.5, None, T0, T0)

    deleted = await writer.delete(f"/api/v1/alerts/{alert['id']}")
    again = await writer.delete(f"/api/v1/alerts/{alert['id']}")

    assert deleted.status_code == 204 and deleted.content == b""
    assert again.status_code == 404
    assert (await writer.get(f"/api/v1/alerts/{alert['id']}")).status_code == 404
    assert [a["id"] for a in (await writer.get("/api/v1/alerts")).json()] == [kept["id"]]
    events = (await writer.get(f"/api/v1/alerts/{alert['id']}/events")).json()
    assert [e["type"] for e in events["events"]] == ["fired"]
    deleted_at = await db.fetchval("SELECT deleted_at FROM alerts WHERE id = $1", alert["id"])
    assert deleted_at is not None  # kept, for the alerts service's records
    assert writable.metric("stockstreamer_api_alert_changes_total", change="deleted") == 1


async def test_at_most_max_alerts_are_in_force(database_url: str) -> None:
    api = ThreadedApi(database_url, api_token=TOKEN, max_alerts=2).start()
    try:
        async with api.client(Authorization=f"Bearer {TOKEN}") as writer:
            first = await create(writer)
            await create(writer)
            full = await writer.post("/api/v1/alerts", json=ALERT)
            await writer.delete(f"/api/v1/alerts/{first['id']}")
            room = await writer.post("/api/v1/alerts", json=ALERT)
    finally:
        api.stop()
    assert full.status_code == 409
    assert full.json()["detail"].startswith("at most 2 alerts may be in force")
    assert room.status_code == 201


async def test_events_are_every_firing_and_delivery_oldest_first(
    writer: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await db.execute(CHANNEL, "phone")
    alert = await create(writer, channels=["browser", "phone"])
    other = await create(writer, value=500)
    first = await db.fetchval(FIRING, alert["id"], 201.0, 200.5, 7, T0, T0)
    at = T0 + timedelta(seconds=1)
    await db.execute(DELIVERY, first, "phone", 1, "failed", "HTTP 503", at)
    await db.execute(DELIVERY, first, "phone", 2, "delivered", None, at + timedelta(seconds=2))
    second = await db.fetchval(FIRING, alert["id"], 202.0, 200.5, 9, at, at + timedelta(hours=1))
    await db.fetchval(FIRING, other["id"], 501.0, 500, 10, at, at)  # another alert's

    response = await writer.get(f"/api/v1/alerts/{alert['id']}/events")

    assert response.status_code == 200
    body = response.json()
    assert body["alert_id"] == alert["id"]
    assert [(e["type"], e["firing_id"]) for e in body["events"]] == [
        ("fired", first),
        ("delivery", first),
        ("delivery", first),
        ("fired", second),
    ]
    fired, failed, delivered, _ = body["events"]
    assert (fired["price"], fired["line"], fired["tick_ts"]) == (201, 200.5, "2026-01-05T15:00:00Z")
    assert (failed["channel"], failed["attempt"], failed["result"], failed["detail"]) == (
        "phone",
        1,
        "failed",
        "HTTP 503",
    )
    assert (delivered["attempt"], delivered["result"], delivered["detail"]) == (
        2,
        "delivered",
        None,
    )


async def test_a_firing_is_an_alert_event_on_every_stream(
    writer: httpx.AsyncClient, market: Market, db: asyncpg.Connection, writable: ThreadedApi
) -> None:
    await market.stocks("AAPL", "NVDA")
    alert = await create(writer, note="take profit")
    async with (
        open_stream(writer) as every,
        open_stream(writer, {"symbols": "NVDA"}) as nvda_only,
    ):
        async with db.transaction():  # as the alerts service records a firing
            firing = await db.fetchval(FIRING, alert["id"], 201.25, 200.5, 5, T0, T0)
            await db.execute("SELECT pg_notify('alert', $1)", str(firing))
        event = await every.next()
        other = await nvda_only.next()
        await db.execute("SELECT pg_notify('alert', 'x1')")  # anyone may notify: checked
        await market.ticks([("NVDA", T0, 130)])
        after = await nvda_only.next()

    assert event.event == other.event == "alert"
    assert event.id is None  # resume points are tick ids only
    assert (
        event.data
        == other.data
        == {
            "firing_id": firing,
            "alert_id": alert["id"],
            "symbol": "AAPL",
            "condition": "above",
            "value": 200.5,
            "price": 201.25,
            "line": 200.5,
            "ts": int(T0.timestamp() * 1000),
            "note": "take profit",
            "channels": ["browser"],
        }
    )
    assert after.event == "price"
    dropped = "stockstreamer_api_notifications_dropped_total"
    assert writable.metric(dropped, channel="alert", reason="malformed") == 1
