"""Price alerts: evaluation cost per tick as alerts grow, and tick-to-webhook latency.

(a) The evaluator alone (services/alerts/evaluator.py) at 100, 1,000 and 10,000 armed alerts
on 6 symbols, against the naive way: every tick checks each of its symbol's alerts. Two price
paths: one that stays between the lines (the common tick: nothing fires) and a random walk that
crosses them (firings and re-arms included). Target: under 50 µs a tick at 10,000 alerts, and
flat.

(b) `python -m services.alerts` (one process) with 1,000 armed alerts, ticks written by the
fetcher's own store (10 batches a second of one tick per symbol) into a real PostgreSQL, and a
JSON webhook receiver on loopback: from each firing tick's commit to its webhook's arrival.
Target: p99 under 1 s.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from bench.history_data import log
from services.alerts.evaluator import AlertSpec, Condition, Evaluator, Outcome
from services.runner.embedded_db import free_port
from services.runner.processes import ServiceProcess
from tests.alerts.market import Market, add_alert
from tests.alerts.receiver import Receiver

SYMBOLS = ["GE", "AMZN", "NVDA", "INTC", "AAPL", "NFLX"]
SIZES = (100, 1_000, 10_000)
TARGET_US = 50.0
TARGET_P99_MS = 1000.0
BATCH = 1000  # ticks per Outcome, as the service's batches
TS = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)


def _alerts(count: int, rnd: random.Random, spread: float) -> list[AlertSpec]:
    """`count` armed alerts over SYMBOLS, lines between 0.5 % and `spread` % from 100."""
    specs = []
    for i in range(count):
        up = i % 2 == 0
        distance = rnd.uniform(0.5, spread) / 100
        line = 100 * (1 + distance) if up else 100 * (1 - distance)
        condition: Condition = "above" if up else "below"
        specs.append(AlertSpec(i + 1, SYMBOLS[i % len(SYMBOLS)], condition, round(line, 2)))
    return specs


def _paths(rnd: random.Random, ticks: int, crossing: bool) -> list[tuple[str, float]]:
    prices = dict.fromkeys(SYMBOLS, 100.0)
    path = []
    for i in range(ticks):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        if crossing:  # a random walk over the lines, held within +-6 %
            prices[symbol] = min(106.0, max(94.0, prices[symbol] * (1 + rnd.gauss(0, 0.002))))
        else:  # between the nearest lines: nothing fires
            prices[symbol] = 100 + rnd.uniform(-0.4, 0.4)
        path.append((symbol, prices[symbol]))
    return path


class Scan:
    """The naive evaluator: every tick looks at every alert of its symbol."""

    def __init__(self, specs: list[AlertSpec], rearm_pct: float) -> None:
        self.down, self.up = 1 - rearm_pct / 100, 1 + rearm_pct / 100
        self.by_symbol: dict[str, list[tuple[int, bool, float]]] = {}
        self.armed = {s.id: True for s in specs}
        for s in specs:
            self.by_symbol.setdefault(s.symbol, []).append((s.id, s.condition == "above", s.value))

    def tick(self, symbol: str, price: float, out: Outcome) -> None:
        armed = self.armed
        for alert_id, up, line in self.by_symbol.get(symbol, ()):
            if armed[alert_id]:
                if price >= line if up else price <= line:
                    armed[alert_id] = out.armed[alert_id] = False
            elif price < line * self.down if up else price > line * self.up:
                armed[alert_id] = out.armed[alert_id] = True


def _time_evaluator(specs: list[AlertSpec], path: list[tuple[str, float]]) -> tuple[float, int]:
    evaluator = Evaluator(0.2)
    for spec in specs:
        evaluator.add(spec)
    fired = 0
    tick = evaluator.tick
    began = time.perf_counter()
    for start in range(0, len(path), BATCH):
        out = Outcome()
        for event_id, (symbol, price) in enumerate(path[start : start + BATCH], start):
            tick(symbol, price, TS, event_id, out)
        fired += len(out.firings)
    return (time.perf_counter() - began) / len(path) * 1e6, fired


def _time_scan(specs: list[AlertSpec], path: list[tuple[str, float]]) -> float:
    scan = Scan(specs, 0.2)
    began = time.perf_counter()
    for start in range(0, len(path), BATCH):
        out = Outcome()
        for symbol, price in path[start : start + BATCH]:
            scan.tick(symbol, price, out)
    return (time.perf_counter() - began) / len(path) * 1e6


def _evaluation_rows() -> list[str]:
    rows = []
    for crossing in (False, True):
        ours, naive, fires = [], [], []
        for size in SIZES:
            rnd = random.Random(size)
            specs = _alerts(size, rnd, 6.0)
            path = _paths(rnd, 60_000 if crossing else 120_000, crossing)
            per_tick, fired = min(_time_evaluator(specs, path) for _ in range(3))
            ours.append(per_tick)
            fires.append(fired / len(path))
            naive.append(min(_time_scan(specs, path[:12_000]) for _ in range(2)))
            log(f"alerts: {size:,} alerts, crossing={crossing}: {per_tick:.2f} µs a tick")
        # Flat: a tick that fires nothing costs the same whatever the alerts; one that does
        # costs more by what it fires and re-arms (the output), not by the alerts it skips.
        flat = crossing or ours[-1] < 2 * ours[0]
        ok = "ok" if ours[-1] < TARGET_US and flat else "MISSED"
        what = (
            "a random walk across the lines, firings and re-arms included (firings a tick: "
            + " / ".join(f"{f:.2f}" for f in fires)
            + "; the cost grows with them, the output)"
            if crossing
            else "ticks between the lines (nothing fires: the common tick)"
        )
        rows.append(
            f"| alerts: evaluation per tick, 100 / 1,000 / 10,000 armed alerts on 6 symbols, "
            f"{what}; each tick scanning its symbol's alerts vs sorted lines (target < "
            f"{TARGET_US:.0f} µs at 10,000, flat) | "
            + " / ".join(f"{v:,.2f} µs" for v in naive)
            + " | "
            + " / ".join(f"{v:.2f} µs" for v in ours)
            + f" | {naive[-1] / ours[-1]:,.0f}x at 10,000, {ok} |"
        )
    return rows


async def _latency(url: str, seconds: float = 40.0) -> list[str]:
    receiver = await Receiver().start()
    market = await Market.open(url, SYMBOLS)
    channels = Path(tempfile.mkdtemp(prefix="stockstreamer-bench-")) / "alert-channels.yaml"
    channels.write_text(f"hook: {receiver.apprise_url('hook')}\n")
    conn = await asyncpg.connect(url)
    rnd = random.Random(1000)
    committed: dict[int, float] = {}  # event id → time.time() its batch committed
    try:
        await market.ticks(*((s, 100.0) for s in SYMBOLS))
        for spec in _alerts(1000, rnd, 3.0):
            await add_alert(conn, spec.symbol, spec.condition, spec.value, ["hook"])
        port = free_port()
        proc = ServiceProcess(
            "services.alerts",
            {
                "DATABASE_URL": url,
                "STOCKSTREAMER_ALERTS_PORT": str(port),
                "STOCKSTREAMER_ALERT_CHANNELS_FILE": str(channels),
                "STOCKSTREAMER_LOG_LEVEL": "WARNING",
            },
        ).start()
        try:
            await asyncio.to_thread(proc.wait_http, f"http://127.0.0.1:{port}/readyz")
            prices = dict.fromkeys(SYMBOLS, 100.0)
            deadline = time.monotonic() + seconds
            next_at = time.monotonic()
            while time.monotonic() < deadline:
                batch = []
                for symbol in SYMBOLS:
                    step = prices[symbol] * (1 + rnd.gauss(0, 0.0008))
                    prices[symbol] = min(103.0, max(97.0, step))
                    batch.append((symbol, round(prices[symbol], 3)))
                last = await market.ticks(*batch)
                now = time.time()
                for event_id in range(last - len(batch) + 1, last + 1):
                    committed[event_id] = now
                next_at += 0.1
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.sleep(3.0)  # the last deliveries
            armed = await conn.fetchval("SELECT count(*) FROM alerts WHERE armed")
        finally:
            proc.stop()
        ticks = {
            r["id"]: r["tick_event_id"]
            for r in await conn.fetch("SELECT id, tick_event_id FROM alert_firings")
        }
        firsts: dict[int, float] = {}
        for hit in receiver.received:
            firing = int(hit.body["firing_id"])
            firsts.setdefault(firing, hit.at)
        latencies = sorted(
            (at - committed[ticks[f]]) * 1000 for f, at in firsts.items() if ticks[f] in committed
        )
        undelivered = len(ticks) - len(firsts)
    finally:
        await conn.close()
        await market.close()
        await receiver.stop()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    ok = "ok" if p99 < TARGET_P99_MS and not undelivered else "MISSED"
    return [
        f"| alerts: tick-to-webhook, 1,000 armed alerts on 6 symbols, 10 batches a second, "
        f"one process, JSON webhook on loopback: from the firing tick's commit to the webhook's "
        f"arrival, p50 / p99 / max over {len(latencies):,} firings ({undelivered} undelivered; "
        f"{armed} armed at the end) (target p99 < {TARGET_P99_MS:,.0f} ms) | — | "
        f"{p50:,.0f} / {p99:,.0f} / {latencies[-1]:,.0f} ms | {ok} |"
    ]


def run(url: str, scale: str = "default") -> list[str]:
    rows = _evaluation_rows()
    rows += asyncio.run(_latency(url))
    return rows
