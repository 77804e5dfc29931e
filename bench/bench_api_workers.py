"""The API on one and on two worker processes: events delivered a second, and per core it used.

STREAMS streams, opened by lean clients in processes of their own (bench.sse_load) and spread
over the workers by the kernel, receive BATCHES batches of one tick per symbol written RATE a
second through the fetcher's store: more than one core can fan out, so one worker falls behind and
catches up after the writes stop. Measured from the first write until every stream has every
event: events delivered a second, the API's CPU (the supervisor's and every worker's) in cores,
and events per second of API CPU; and the API's memory (PSS, shared pages counted once) with the
streams open. The clients need an open file per stream (`ulimit -Hn` above STREAMS).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg

from bench.processes import cpu_seconds, start_api, track
from services.common.models import Tick
from services.common.retention import set_retention
from services.fetcher import queries
from services.fetcher.store import TickStore
from services.runner.processes import child_pids

SYMBOLS = ["GE", "AMZN", "NVDA", "INTC", "AAPL", "NFLX"]
STREAMS = 3000
CLIENT_PROCESSES = 2
BATCHES = 300
RATE = 30.0  # batches a second: 540,000 events a second offered to 3,000 streams
DRAIN_TIMEOUT = 60.0


def api_cpu(pid: int) -> float:
    """CPU seconds of the API: the process and its live workers."""
    return sum(cpu_seconds(p) for p in [pid, *child_pids(pid)])


def api_pss_mib(pid: int) -> float:
    """Proportional set size of the API's processes (each shared page counted once), MiB."""
    total = 0
    for p in [pid, *child_pids(pid)]:
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total / 1024


class Clients:
    """CLIENT_PROCESSES of bench.sse_load, and the events they have received so far."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.received: list[int] = []
        self.readers: list[asyncio.Task[None]] = []
        self.out = Path(tempfile.mkdtemp(prefix="stockstreamer-workers-"))

    async def open(self, base: str) -> None:
        for i in range(CLIENT_PROCESSES):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.sse_load",
                base,
                str(STREAMS // CLIENT_PROCESSES),
                str(self.out / f"{i}.json"),
                stdout=asyncio.subprocess.PIPE,
            )
            self.procs.append(proc)
            self.received.append(0)
        for proc in self.procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            assert line.strip() == b"ready", line
        self.readers = [asyncio.create_task(self._follow(i)) for i in range(len(self.procs))]

    async def _follow(self, i: int) -> None:
        stdout = self.procs[i].stdout
        assert stdout is not None
        while line := await stdout.readline():
            self.received[i] = int(line)

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in self.procs:
            await proc.wait()
        for task in self.readers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _write(conn: asyncpg.Connection, hours_ago: int) -> None:
    store = await TickStore.open(conn, SYMBOLS)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=hours_ago)
    started = time.monotonic()
    for b in range(BATCHES):
        ts = t0 + timedelta(seconds=b)
        await store.write_live([Tick(s, ts, Decimal("100.5")) for s in SYMBOLS])
        await asyncio.sleep(max(0.0, started + (b + 1) / RATE - time.monotonic()))


async def _measure(url: str, workers: int) -> tuple[float, float, float, float, float]:
    """(events a second, API cores, events a second per API core, PSS MiB with the streams,
    the load generator's cores)."""
    api, base = await start_api(
        url,
        STOCKSTREAMER_API_WORKERS=str(workers),
        # room for the kernel's uneven spread over the workers
        STOCKSTREAMER_API_MAX_STREAMS=str(2 * STREAMS),
        STOCKSTREAMER_API_LIMIT_CONCURRENCY=str(2 * STREAMS + 200),
    )
    conn = await asyncpg.connect(url)
    clients = Clients()
    try:
        await clients.open(base)
        await asyncio.sleep(1)  # every stream's first events (the market) are out
        memory = api_pss_mib(api.pid)
        expected = STREAMS * BATCHES * len(SYMBOLS)
        load = sum(cpu_seconds(p.pid) for p in clients.procs)
        cpu, started = api_cpu(api.pid), time.monotonic()
        await _write(conn, workers)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while sum(clients.received) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
        cpu = api_cpu(api.pid) - cpu
        load = sum(cpu_seconds(p.pid) for p in clients.procs) - load
        delivered = sum(clients.received)
        assert delivered == expected, f"{delivered:,} of {expected:,} events delivered"
    finally:
        await clients.close()
        await conn.close()
        api.stop()
    return delivered / elapsed, cpu / elapsed, delivered / cpu, memory, load / elapsed


async def _both(url: str) -> list[str]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the API's sockets, inherited
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    conn = await asyncpg.connect(url)
    await conn.execute(queries.ENSURE_STOCKS, SYMBOLS)
    await track(conn, SYMBOLS)
    await set_retention(conn, timedelta(days=3650), timedelta(days=3650))
    await conn.close()
    one = await _measure(url, 1)
    two = await _measure(url, 2)
    offered = STREAMS * RATE * len(SYMBOLS)
    return [
        f"| api workers: events delivered a second to {STREAMS:,} streams ({offered:,.0f}/s "
        f"offered), 1 vs 2 worker processes; API cores used (the load generator's) "
        f"| {one[0]:,.0f}/s, {one[1]:.2f} cores ({one[4]:.2f}) "
        f"| {two[0]:,.0f}/s, {two[1]:.2f} cores ({two[4]:.2f}) | {two[0] / one[0]:.2f}x |",
        f"| api workers: events a second per core of API CPU (CPU per event), 1 vs 2 worker "
        f"processes | {one[2]:,.0f} ({1e6 / one[2]:.1f} µs) "
        f"| {two[2]:,.0f} ({1e6 / two[2]:.1f} µs) | {two[2] / one[2]:.2f}x |",
        f"| api workers: API memory (PSS) with {STREAMS:,} streams open, 1 vs 2 worker processes "
        f"| {one[3]:.0f} MiB | {two[3]:.0f} MiB | {two[3] / one[3]:.2f}x |",
    ]


def run(url: str, scale: str = "default") -> list[str]:
    return asyncio.run(_both(url))
