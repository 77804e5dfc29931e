"""`python -m services.alerts` as a real process: stopped and killed mid-run, every firing is
stored once, none is missed, and each is delivered to the webhook at least once."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx

from services.alerts.evaluator import AlertSpec, Evaluator, Outcome
from services.runner.embedded_db import free_port
from services.runner.processes import ROOT, ServiceProcess
from tests.alerts.conftest import SYMBOLS
from tests.alerts.market import Market, add_alert
from tests.alerts.receiver import Receiver
from tests.utils.waiting import eventually

REARM_PCT = 0.2
PENDING = """
SELECT count(*)
FROM alert_firings AS f
JOIN alerts AS a ON a.id = f.alert_id
CROSS JOIN LATERAL unnest(a.channels) AS c (channel)
WHERE NOT EXISTS (
    SELECT FROM alert_deliveries AS d
    WHERE d.firing_id = f.id AND d.channel = c.channel AND d.result = 'delivered'
)
"""


def alerts_env(url: str, port: int, channels: Path | None = None) -> dict[str, str]:
    env = {
        "DATABASE_URL": url,
        "STOCKSTREAMER_ALERTS_PORT": str(port),
        "STOCKSTREAMER_LOG_FORMAT": "json",
        "STOCKSTREAMER_ALERT_RETRY_WAIT_INITIAL": "0.05",
        "STOCKSTREAMER_ALERT_RETRY_WAIT_MAX": "0.2",
    }
    if channels is not None:
        env["STOCKSTREAMER_ALERT_CHANNELS_FILE"] = str(channels)
    return env


async def start(env: dict[str, str]) -> ServiceProcess:
    proc = ServiceProcess("services.alerts", env).start()
    await asyncio.to_thread(
        proc.wait_http, f"http://127.0.0.1:{env['STOCKSTREAMER_ALERTS_PORT']}/readyz"
    )
    return proc


async def test_stopped_and_killed_mid_run_it_neither_repeats_nor_misses_a_firing(
    database_url: str, db: asyncpg.Connection, market: Market, receiver: Receiver, tmp_path: Path
) -> None:
    channels = tmp_path / "alert-channels.yaml"
    channels.write_text(f"phone: {receiver.apprise_url('phone')}\n")
    await market.ticks(*((s, 100.0) for s in SYMBOLS))
    specs = []
    for symbol in SYMBOLS:
        for step in range(1, 7):
            for condition, line in (("above", 100 + step * 0.4), ("below", 100 - step * 0.4)):
                alert_id = await add_alert(db, symbol, condition, line, ["phone", "browser"])
                specs.append(AlertSpec(alert_id, symbol, condition, line))  # type: ignore[arg-type]
    port = free_port()
    env = alerts_env(database_url, port, channels)
    proc = await start(env)
    first = await db.fetchval("SELECT last_event_id FROM alert_cursor")

    rnd = random.Random(19)
    prices = dict.fromkeys(SYMBOLS, 100.0)
    written: list[tuple[int, str, float]] = []  # event id, symbol, price
    ticks_in = asyncio.Event()

    async def trade(rounds: int) -> None:
        for _ in range(rounds):
            batch = []
            for symbol in SYMBOLS:
                prices[symbol] = min(104.0, max(96.0, prices[symbol] + rnd.gauss(0, 0.3)))
                batch.append((symbol, round(prices[symbol], 2)))
            last = await market.ticks(*batch)
            written.extend((last - len(batch) + 1 + i, s, p) for i, (s, p) in enumerate(batch))
            await asyncio.sleep(0.005)
        ticks_in.set()

    try:
        await trade(150)
        writer = asyncio.create_task(trade(150))
        await asyncio.sleep(0.2)
        assert await asyncio.to_thread(proc.stop) == 0  # SIGTERM: the batch under way, then out
        proc = await start(env)
        await writer
        writer = asyncio.create_task(trade(300))
        await asyncio.sleep(0.4)
        proc.signal(signal.SIGKILL)  # mid-batch, mid-delivery: nothing finishes
        assert await asyncio.to_thread(proc.wait) == -signal.SIGKILL
        await asyncio.sleep(0.2)
        proc = await start(env)
        await writer
        last = written[-1][0]
        await eventually(
            lambda: db.fetchval("SELECT last_event_id = $1 FROM alert_cursor", last), timeout=30
        )

        async def all_delivered() -> bool:
            return await db.fetchval(PENDING) == 0

        await eventually(all_delivered, timeout=30)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            metrics = (await client.get("/metrics")).text
    finally:
        await asyncio.to_thread(proc.stop)

    # What evaluating every tick once, in order, fires: exactly what was stored.
    evaluator = Evaluator(REARM_PCT)
    for spec in specs:
        evaluator.add(spec)
    expected = []
    for event_id, symbol, price in sorted(written):
        assert event_id > first
        out = Outcome()
        evaluator.tick(symbol, price, datetime.now(UTC), event_id, out)
        expected += [(f.alert_id, event_id) for f in out.firings]
    stored = [
        (r["alert_id"], r["tick_event_id"])
        for r in await db.fetch("SELECT alert_id, tick_event_id FROM alert_firings ORDER BY id")
    ]
    assert len(expected) > 20, "the path should cross lines many times"
    assert sorted(stored, key=lambda f: (f[1], f[0])) == sorted(
        expected, key=lambda f: (f[1], f[0])
    )
    # every firing reached the webhook at least once, under its own id
    firing_ids = {r["id"] for r in await db.fetch("SELECT id FROM alert_firings")}
    assert set(receiver.firing_ids("phone")) == firing_ids
    fired = await db.fetch("SELECT id, fired, armed FROM alerts ORDER BY id")
    counts = {spec.id: sum(1 for a, _ in expected if a == spec.id) for spec in specs}
    assert {r["id"]: r["fired"] for r in fired} == counts
    assert {r["id"]: r["armed"] for r in fired} == {s.id: evaluator.is_armed(s.id) for s in specs}
    assert "stockstreamer_alerts_armed" in metrics
    assert "stockstreamer_alerts_tick_to_delivery_seconds_bucket" in metrics


def run_alerts(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.alerts"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("STOCKSTREAMER_")} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bad_channels_file_stops_the_start_naming_the_problem_not_the_url(
    tmp_path: Path,
) -> None:
    channels = tmp_path / "alert-channels.yaml"
    channels.write_text("phone: nonsense://s3cr3t-token@example.com/hook\n")
    done = run_alerts(
        {
            "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "STOCKSTREAMER_ALERT_CHANNELS_FILE": str(channels),
        }
    )
    assert done.returncode == 2
    assert "STOCKSTREAMER_ALERT_CHANNELS_FILE" in done.stderr
    assert "channel 'phone'" in done.stderr and "Apprise does not understand" in done.stderr
    assert "s3cr3t" not in done.stderr + done.stdout


async def test_without_a_database_it_waits_unready_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = alerts_env(f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/none", port)
    with ServiceProcess("services.alerts", env) as proc:
        await asyncio.to_thread(proc.wait_http, f"http://127.0.0.1:{port}/healthz")
        await asyncio.to_thread(proc.wait_http, f"http://127.0.0.1:{port}/readyz", status=503)
        assert await asyncio.to_thread(proc.stop) == 0
    assert "database unreachable; retrying" in proc.output
    assert "postgresql://postgres:***@" in proc.output and "hunter2" not in proc.output
