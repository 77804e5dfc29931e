"""Live delivery to many clients: per-client polling (the original design) vs LISTEN + fan-out,
and one API process fanning out to 1,000 streams, measured by a client in a process of its own."""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
from httpx_sse import aconnect_sse

from bench.processes import cpu_seconds, start_api
from services.common.models import Tick
from services.common.retention import set_retention
from services.fetcher import queries
from services.fetcher.store import TickStore

SYMBOLS = ["GE", "AMZN", "NVDA", "INTC", "AAPL", "NFLX"]
LONG = timedelta(days=3650)
MANY = 1000
CLIENTS = 50
BATCHES = 30  # of one tick per symbol, like one fetcher round
RATE = 10.0  # batches per second
POLL_SECONDS = 1.0
POLL = "SELECT symbol, ts, price, event_id FROM ticks WHERE event_id > $1 ORDER BY event_id"


async def _write(conn: asyncpg.Connection, offset: int, committed: dict[int, float]) -> None:
    """BATCHES rounds at RATE per second, through the fetcher's store; records commit times."""
    await set_retention(conn, LONG, LONG)
    store = await TickStore.open(conn, SYMBOLS)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6 - offset)
    for b in range(BATCHES):
        ts = t0 + timedelta(seconds=b)
        written = await store.write_live([Tick(s, ts, Decimal("100.5")) for s in SYMBOLS])
        now = time.time()
        assert written.max_event_id is not None
        for event_id in range(written.max_event_id - len(SYMBOLS) + 1, written.max_event_id + 1):
            committed[event_id] = now
        await asyncio.sleep(1 / RATE)


def _summary(latencies: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


async def _polling(url: str) -> tuple[float, float, float]:
    """Each client asks the database for new ticks once a second."""
    conn = await asyncpg.connect(url)
    pool = await asyncpg.create_pool(url, min_size=CLIENTS, max_size=CLIENTS)
    start = await conn.fetchval("SELECT coalesce(max(event_id), 0) FROM ticks")
    committed: dict[int, float] = {}
    seen: list[tuple[int, float]] = []
    polls = 0
    stop = asyncio.Event()

    async def client(i: int) -> None:
        nonlocal polls
        last = start
        await asyncio.sleep(POLL_SECONDS * i / CLIENTS)  # spread out, as real clients would be
        while not stop.is_set():
            rows = await pool.fetch(POLL, last)
            polls += 1
            now = time.time()
            seen.extend((r["event_id"], now) for r in rows)
            last = rows[-1]["event_id"] if rows else last
            await asyncio.sleep(POLL_SECONDS)

    tasks = [asyncio.create_task(client(i)) for i in range(CLIENTS)]
    started = time.monotonic()
    await _write(conn, 0, committed)
    await asyncio.sleep(POLL_SECONDS * 1.5)
    stop.set()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    await pool.close()
    await conn.close()
    p50, p99 = _summary([t - committed[i] for i, t in seen])
    return p50, p99, polls / elapsed


async def _streaming(url: str) -> tuple[float, float, float]:
    """Each client holds an SSE stream of one API process."""
    api, base = await start_api(url)
    conn = await asyncpg.connect(url)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            committed: dict[int, float] = {}
            seen: list[tuple[int, float]] = []
            ready = asyncio.Barrier(CLIENTS + 1)

            async def client() -> None:
                async with aconnect_sse(http, "GET", "/api/v1/stream") as source:
                    await ready.wait()
                    count = 0
                    async for event in source.aiter_sse():
                        if event.event != "price":
                            continue  # the `market` event every stream begins with
                        seen.append((int(event.id), time.time()))
                        count += 1
                        if count == BATCHES * len(SYMBOLS):
                            return

            tasks = [asyncio.create_task(client()) for _ in range(CLIENTS)]
            await ready.wait()
            started = time.monotonic()
            before = await _fetches(http)
            await _write(conn, 1, committed)
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            queries_per_s = (await _fetches(http) - before) / (time.monotonic() - started)
    finally:
        await conn.close()
        api.stop()
    p50, p99 = _summary([t - committed[i] for i, t in seen])
    return p50, p99, queries_per_s


async def _fetches(http: httpx.AsyncClient) -> float:
    """Queries the API ran for notifications so far (one per fetch)."""
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith("stockstreamer_api_stream_fetch_seconds_count"):
            return float(line.split()[-1])
    return 0.0


async def _fan_out(url: str) -> tuple[float, float, float, int]:
    """1,000 streams from one process, one more from another; the API's CPU per event sent."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the API's sockets, inherited
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    api, base = await start_api(
        url,
        STOCKSTREAMER_API_MAX_STREAMS=str(MANY + 10),
        STOCKSTREAMER_API_LIMIT_CONCURRENCY=str(MANY + 100),
    )
    conn = await asyncpg.connect(url)
    events = BATCHES * len(SYMBOLS)
    out = Path(tempfile.mkdtemp(prefix="stockstreamer-clients-"))
    try:
        load, probe = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.stream_clients",
                base,
                str(n),
                str(events),
                str(out / f"{n}.json"),
                stdout=asyncio.subprocess.PIPE,
            )
            for n in (MANY, 1)
        ]
        for client in (load, probe):
            assert client.stdout is not None
            assert (await asyncio.wait_for(client.stdout.readline(), 120)).strip() == b"ready"
        assert api.proc is not None
        cpu = cpu_seconds(api.pid)
        committed: dict[int, float] = {}
        await _write(conn, 2, committed)
        await asyncio.wait_for(asyncio.gather(load.wait(), probe.wait()), 120)
        cpu = cpu_seconds(api.pid) - cpu
    finally:
        await conn.close()
        api.stop()
    many = json.loads((out / f"{MANY}.json").read_text())
    one = json.loads((out / "1.json").read_text())
    delivered = sum(many["received"]) + sum(one["received"])
    latencies = [t - committed[int(i)] for i, t in one["first"].items()]
    p50, p99 = _summary(latencies)
    return p50, p99, cpu / delivered * 1e6, delivered


async def _both(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    await conn.execute(queries.ENSURE_STOCKS, SYMBOLS)
    await conn.close()
    poll50, poll99, poll_qps = await _polling(url)
    sse50, sse99, sse_qps = await _streaming(url)
    many50, many99, cpu_us, delivered = await _fan_out(url)
    expected = (MANY + 1) * BATCHES * len(SYMBOLS)
    return [
        f"| api: commit-to-client latency p50 / p99, {CLIENTS} clients (polling each 1 s vs "
        f"LISTEN + fan-out) | {poll50:.0f} / {poll99:.0f} ms | {sse50:.1f} / {sse99:.1f} ms "
        f"| {poll50 / sse50:.0f}x |",
        f"| api: database queries per second, {CLIENTS} clients, {RATE:.0f} batches/s "
        f"| {poll_qps:.0f}/s | {sse_qps:.1f}/s | {poll_qps / max(sse_qps, 0.1):.1f}x |",
        f"| api: {MANY:,} streams on one process (clients in another), commit-to-client p50 / p99 "
        f"for one more client in a third process; API CPU per event sent | {delivered:,} of "
        f"{expected:,} events delivered | {many50:.0f} / {many99:.0f} ms, {cpu_us:.0f} µs CPU "
        f"per event | — |",
    ]


def run(url: str, scale: str = "default") -> list[str]:
    return asyncio.run(_both(url))
