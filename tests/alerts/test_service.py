"""The alerts service in this process against a real PostgreSQL and a real webhook receiver."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from services.alerts.config import AlertsSettings
from services.alerts.delivery import FIRING_HEADER
from services.alerts.metrics import AlertsMetrics
from services.alerts.service import AlertService
from tests.alerts.market import Market, add_alert, delete_alert
from tests.alerts.receiver import Receiver
from tests.utils.waiting import eventually

# Generous: the machine may be busy; nothing here is timed.
WAIT = 30.0


def settings(url: str, **extra: Any) -> AlertsSettings:
    values: dict[str, Any] = {
        "database_url": url,
        "alerts_port": 0,
        "alert_retry_wait_initial": 0.05,
        "alert_retry_wait_max": 0.1,
        **extra,
    }
    return AlertsSettings(**values)


@asynccontextmanager
async def running(
    url: str, channels: dict[str, str] | None = None, **extra: Any
) -> AsyncIterator[AlertService]:
    service = AlertService(
        settings(url, **extra), channels or {}, AlertsMetrics(CollectorRegistry())
    )
    task = asyncio.create_task(service.run())
    try:
        await eventually(
            lambda: service.connected or task.done(), message="service not ready", timeout=WAIT
        )
        assert not task.done(), task.result()
        yield service
    finally:
        service.stop()
        await task


async def rows(db: asyncpg.Connection, query: str, *args: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await db.fetch(query, *args)]


FIRINGS = "SELECT id, alert_id, price, line, tick_event_id FROM alert_firings ORDER BY id"
DELIVERIES = """
SELECT firing_id, channel, attempt, result
FROM alert_deliveries
ORDER BY firing_id, channel, attempt
"""
ALERT_STATE = "SELECT armed, fired FROM alerts WHERE id = $1"


async def test_a_crossing_fires_once_reaches_the_webhook_with_its_id_and_is_recorded(
    database_url: str, db: asyncpg.Connection, market: Market, receiver: Receiver
) -> None:
    await market.ticks(("AAPL", 195.0))
    alerted: asyncio.Queue[str] = asyncio.Queue()
    await db.add_listener("alert", lambda *args: alerted.put_nowait(str(args[3])))
    channels = {"phone": receiver.apprise_url("phone")}
    async with running(database_url, channels) as service:
        alert_id = await add_alert(db, "AAPL", "above", 200.0, ["phone", "browser"], "take profit")
        await eventually(lambda: alert_id in service.evaluator, timeout=WAIT)
        await market.ticks(("AAPL", 199.0), ("NVDA", 500.0))
        crossing = await market.ticks(("AAPL", 200.5))
        await market.ticks(("AAPL", 201.0), ("AAPL", 200.2))  # still above: no second firing
        last = await market.ticks(("GE", 10.0))
        await eventually(lambda: service.cursor == last, timeout=WAIT)
        await eventually(lambda: len(receiver.received) == 1, timeout=WAIT)
        await eventually(
            lambda: db.fetchval("SELECT count(*) = 2 FROM alert_deliveries"), timeout=WAIT
        )
        metrics = service.metrics
    firings = await rows(db, FIRINGS)
    assert len(firings) == 1
    firing_id = firings[0][0]
    assert firings == [(firing_id, alert_id, 200.5, 200.0, crossing)]
    # the webhook: the firing id in the payload, a header, the title and the body
    hook = receiver.received[0]
    assert hook.path == "/phone"
    assert hook.body["firing_id"] == firing_id and hook.body["alert_id"] == alert_id
    assert hook.headers[FIRING_HEADER.lower()] == str(firing_id)
    assert "AAPL" in hook.body["title"] and f"firing {firing_id}" in hook.body["message"]
    assert "take profit" in hook.body["message"]
    # the browser's delivery is the `alert` notification, sent with the firing
    assert await asyncio.wait_for(alerted.get(), 5) == str(firing_id)
    assert await rows(db, DELIVERIES) == [
        (firing_id, "browser", 1, "delivered"),
        (firing_id, "phone", 1, "delivered"),
    ]
    assert await rows(db, ALERT_STATE, alert_id) == [(False, 1)]
    assert await db.fetchval("SELECT last_event_id FROM alert_cursor") == last
    assert await db.fetch("SELECT name FROM alert_channels") == [("phone",)]
    assert metrics.total("firings_total") == 1
    assert metrics.total("deliveries_total", channel="phone", result="delivered") == 1
    assert metrics.total("deliveries_total", channel="browser", result="delivered") == 1
    assert metrics.total("tick_to_delivery_seconds_count", channel="phone") == 1
    assert metrics.total("ticks_total") == 6


async def test_an_alert_already_past_its_line_fires_at_once_against_the_last_price(
    database_url: str, db: asyncpg.Connection, market: Market
) -> None:
    await market.ticks(("AAPL", 210.0), ("NVDA", 100.0))
    async with running(database_url) as service:
        alert_id = await add_alert(db, "AAPL", "above", 200.0, ["browser"])
        quiet = await add_alert(db, "NVDA", "above", 200.0, ["browser"])
        await eventually(lambda: quiet in service.evaluator, timeout=WAIT)
        await eventually(lambda: db.fetchval("SELECT count(*) FROM alert_firings"), timeout=WAIT)
        assert service.evaluator.armed == 1
    assert [f[1:] for f in await rows(db, FIRINGS)] == [(alert_id, 210.0, 200.0, None)]


async def test_an_alert_added_while_the_service_was_away_fires_at_its_start(
    database_url: str, db: asyncpg.Connection, market: Market
) -> None:
    await market.ticks(("GE", 9.0))
    async with running(database_url):
        pass
    alert_id = await add_alert(db, "GE", "below", 10.0, ["browser"])
    async with running(database_url):
        await eventually(lambda: db.fetchval("SELECT count(*) FROM alert_firings"), timeout=WAIT)
    assert [f[1:] for f in await rows(db, FIRINGS)] == [(alert_id, 9.0, 10.0, None)]


async def test_the_first_start_begins_at_the_newest_tick(
    database_url: str, db: asyncpg.Connection, market: Market
) -> None:
    await market.ticks(("AAPL", 100.0))
    await add_alert(db, "AAPL", "above", 150.0, ["browser"])
    # a crossing and back before the first start is history: never evaluated
    await market.ticks(("AAPL", 160.0))
    newest = await market.ticks(("AAPL", 140.0))
    async with running(database_url) as service:
        assert service.cursor == newest
    assert await rows(db, FIRINGS) == []


async def test_deleted_alerts_stop_and_hovering_fires_once(
    database_url: str, db: asyncpg.Connection, market: Market
) -> None:
    await market.ticks(("NVDA", 100.0))
    async with running(database_url, alert_rearm_pct=1.0) as service:
        gone = await add_alert(db, "NVDA", "below", 95.0, ["browser"])
        kept = await add_alert(db, "NVDA", "above", 105.0, ["browser"])
        await eventually(lambda: kept in service.evaluator, timeout=WAIT)
        await delete_alert(db, gone)
        await eventually(lambda: gone not in service.evaluator, timeout=WAIT)
        for price in (105.0, 104.5, 105.2, 104.0, 105.5, 94.0):  # re-arms only below 103.95
            await market.ticks(("NVDA", price))
        await market.ticks(("NVDA", 103.9))
        last = await market.ticks(("NVDA", 106.0))
        await eventually(lambda: service.cursor == last, timeout=WAIT)
    firings = await rows(db, FIRINGS)
    assert [(f[1], f[2]) for f in firings] == [(kept, 105.0), (kept, 106.0)]
    assert await rows(db, ALERT_STATE, kept) == [(False, 2)]


async def test_change_pct_lines_follow_the_previous_close(
    database_url: str, db: asyncpg.Connection, market: Market
) -> None:
    await market.ticks(("AAPL", 100.0))
    async with running(database_url) as service:
        drop = await add_alert(db, "AAPL", "change_pct", -3.0, ["browser"])
        await eventually(lambda: drop in service.evaluator, timeout=WAIT)
        await market.ticks(("AAPL", 50.0))  # no previous close yet: nothing to compare with
        async with db.transaction():
            await db.execute("UPDATE stocks SET previous_close = 100 WHERE symbol = 'AAPL'")
            await db.execute("SELECT pg_notify('stocks', 'AAPL')")
        await eventually(lambda: service.evaluator.line(drop) is not None, timeout=WAIT)
        assert service.evaluator.line(drop) == 97.0
        await market.ticks(("AAPL", 97.5), ("AAPL", 98.0))
        fell = await market.ticks(("AAPL", 96.9))
        await eventually(lambda: service.cursor == fell, timeout=WAIT)
    assert [f[1:] for f in await rows(db, FIRINGS)] == [(drop, 96.9, 97.0, fell)]


async def test_a_failed_delivery_is_retried_and_every_attempt_recorded(
    database_url: str, db: asyncpg.Connection, market: Market, receiver: Receiver
) -> None:
    await market.ticks(("GE", 10.0))
    receiver.statuses.extend([500, 503])  # two failures, then accepted
    channels = {"ops": receiver.apprise_url("ops"), "pager": receiver.apprise_url("pager")}
    async with running(database_url, channels, alert_delivery_attempts=3) as service:
        alert_id = await add_alert(db, "GE", "above", 11.0, ["ops"])
        await eventually(lambda: alert_id in service.evaluator, timeout=WAIT)
        await market.ticks(("GE", 12.0))
        await eventually(
            lambda: db.fetchval("SELECT count(*) = 3 FROM alert_deliveries"), timeout=WAIT
        )
        # a channel that never answers: given up on after the bounded attempts
        receiver.statuses.extend([500, 500, 500])
        other = await add_alert(db, "GE", "below", 11.0, ["pager"])
        await eventually(lambda: other in service.evaluator, timeout=WAIT)
        await market.ticks(("GE", 10.5))
        await eventually(
            lambda: db.fetchval("SELECT count(*) = 6 FROM alert_deliveries"), timeout=WAIT
        )
        metrics = service.metrics
    first, second = (f[0] for f in await rows(db, FIRINGS))
    assert await rows(db, DELIVERIES) == [
        (first, "ops", 1, "failed"),
        (first, "ops", 2, "failed"),
        (first, "ops", 3, "delivered"),
        (second, "pager", 1, "failed"),
        (second, "pager", 2, "failed"),
        (second, "pager", 3, "abandoned"),
    ]
    assert receiver.firing_ids("ops") == [first] * 3
    assert receiver.firing_ids("pager") == [second] * 3
    port = receiver.url.rsplit(":", 1)[1]
    for (detail,) in await db.fetch(
        "SELECT detail FROM alert_deliveries WHERE result <> 'delivered'"
    ):
        assert detail and port not in detail and "json://" not in detail
    assert metrics.total("deliveries_total", channel="pager", result="abandoned") == 1


async def test_undelivered_firings_are_delivered_at_the_next_start(
    database_url: str, db: asyncpg.Connection, market: Market, receiver: Receiver
) -> None:
    await market.ticks(("AAPL", 100.0))
    async with running(database_url) as service:  # no channel configured: nothing delivered
        alert_id = await add_alert(db, "AAPL", "above", 101.0, ["phone", "browser"])
        await eventually(lambda: alert_id in service.evaluator, timeout=WAIT)
        await market.ticks(("AAPL", 102.0))
        await eventually(lambda: db.fetchval("SELECT count(*) FROM alert_deliveries"), timeout=WAIT)
    # the channel was not configured: given up on, not left pending
    (firing_id,) = (f[0] for f in await rows(db, FIRINGS))
    assert await rows(db, DELIVERIES) == [
        (firing_id, "browser", 1, "delivered"),
        (firing_id, "phone", 1, "abandoned"),
    ]
    # a firing whose delivery never happened (the process died first) goes out at the start
    await db.execute("DELETE FROM alert_deliveries WHERE channel = 'phone'")
    async with running(database_url, {"phone": receiver.apprise_url("phone")}):
        await eventually(lambda: receiver.firing_ids() == [firing_id], timeout=WAIT)
        await eventually(
            lambda: db.fetchval("SELECT count(*) = 2 FROM alert_deliveries"), timeout=WAIT
        )
    assert (firing_id, "phone", 1, "delivered") in await rows(db, DELIVERIES)


async def test_a_lost_connection_catches_up_from_the_cursor(
    database_url: str, db: asyncpg.Connection, market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "services.alerts")
    await market.ticks(("NVDA", 100.0))
    async with running(database_url) as service:
        alert_id = await add_alert(db, "NVDA", "above", 110.0, ["browser"])
        await eventually(lambda: alert_id in service.evaluator, timeout=WAIT)
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name = '' AND query NOT LIKE '%pg_terminate%'"
            " AND pid <> $1",
            market.store.conn.get_server_pid(),
        )
        # written while the service is away: read from the cursor when it is back
        await market.ticks(("NVDA", 111.0), ("NVDA", 100.0))
        last = await market.ticks(("NVDA", 112.0))
        await eventually(lambda: service.cursor == last, timeout=WAIT)
    assert "database unreachable; retrying" in caplog.messages
    assert "database is back; catching up" in caplog.messages
    firings = await rows(db, FIRINGS)
    assert [(f[1], f[2]) for f in firings] == [(alert_id, 111.0), (alert_id, 112.0)]


async def test_changes_take_effect_between_the_ticks_committed_before_and_after_them(
    database_url: str, db: asyncpg.Connection, market: Market
) -> None:
    await market.ticks(("AAPL", 100.0))
    locker = await asyncpg.connect(database_url)
    try:
        async with running(database_url) as service:
            drop = await add_alert(db, "AAPL", "change_pct", -3.0, ["browser"])
            await eventually(lambda: drop in service.evaluator, timeout=WAIT)
            # Hold the service inside its next batch's transaction, so that everything below
            # is committed (and notified) before it reads any of it.
            async with locker.transaction():
                await locker.execute("LOCK TABLE alert_cursor IN EXCLUSIVE MODE")
                await market.ticks(("AAPL", 99.0))
                await eventually(
                    lambda: db.fetchval(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    ),
                    timeout=WAIT,
                )
                crash = await market.ticks(("AAPL", 50.0))  # before there was a previous close
                async with db.transaction():
                    await db.execute("UPDATE stocks SET previous_close = 100 WHERE symbol = 'AAPL'")
                    await db.execute("SELECT pg_notify('stocks', 'AAPL')")
                late = await add_alert(db, "AAPL", "below", 60.0, ["browser"])  # after the crash
                fell = await market.ticks(("AAPL", 96.9))
            await eventually(lambda: service.cursor == fell, timeout=WAIT)
    finally:
        await locker.close()
    assert crash < fell
    assert [f[1:] for f in await rows(db, FIRINGS)] == [
        (late, 50.0, 60.0, None),  # at once, against the last price before it was added
        (drop, 96.9, 97.0, fell),  # its line only from the close on, not on the crash before it
    ]
