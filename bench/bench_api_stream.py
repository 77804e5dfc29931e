"""Live delivery to many clients: per-client polling (the original design) vs LISTEN + fan-out,
and one API process fanning out to 1,000 and to 10,000 streams.

The fan-out runs hold their streams from processes of their own (bench.stream_clients, 2,500
streams each), plus a client subscribed before all of them and one after, whose commit-to-receipt
times show what a place in the fan-out costs. They need an open-file limit of more than 10,200
(the API holds one socket per stream): the soft limit is raised to the hard one, which the run
checks (`ulimit -Hn`; raise `nofile` in /etc/security/limits.conf or the container's ulimits).
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
from httpx_sse import aconnect_sse

from bench.processes import cpu_seconds, rss_bytes, start_api, track
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
# Fan-out runs: (streams, batches, batches a second). 10,000 streams at the real fetcher's pace.
FAN_OUTS = [(MANY, BATCHES, RATE), (10 * MANY, 20, 1.0)]
LOAD_PER_PROCESS = 2500  # streams per load-generating process
POLL = "SELECT symbol, ts, price, event_id FROM ticks WHERE event_id > $1 ORDER BY event_id"


async def _write(
    conn: asyncpg.Connection,
    offset: int,
    committed: dict[int, float],
    batches: int = BATCHES,
    rate: float = RATE,
) -> None:
    """`batches` rounds at `rate` per second, through the fetcher's store; records commit times."""
    await set_retention(conn, LONG, LONG)
    store = await TickStore.open(conn, SYMBOLS)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6 - offset)
    for b in range(batches):
        ts = t0 + timedelta(seconds=b)
        written = await store.write_live([Tick(s, ts, Decimal("100.5")) for s in SYMBOLS])
        now = time.time()
        assert written.max_event_id is not None
        for event_id in range(written.max_event_id - len(SYMBOLS) + 1, written.max_event_id + 1):
            committed[event_id] = now
        await asyncio.sleep(1 / rate)


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


async def _clients(
    base: str, count: int, events: int, out: Path, within: float, record: bool = False
) -> asyncio.subprocess.Process:
    """`count` streams in a process of their own, once all are open."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.stream_clients",
        base,
        str(count),
        str(events),
        str(out),
        f"--within={within}",
        *(["--record"] if record else []),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    assert line.strip() == b"ready", f"stream clients did not start: {line!r}"
    return proc


@dataclass
class FanOut:
    streams: int
    expected: int
    delivered: int
    cpu_us: float  # API CPU per delivered event
    first: tuple[float, float]  # commit-to-receipt p50 / p99 (ms) of the first subscriber
    last: tuple[float, float]  # and of the last
    rss_per_1000: float  # MiB of API resident memory per 1,000 open streams


async def _fan_out(url: str, streams: int, batches: int, rate: float, offset: int) -> FanOut:
    """`streams` streams of one API process, plus one subscribed before them and one after.

    The load clients run in processes of their own, 2,500 streams each at most; the first and the
    last subscriber each in one more, recording when every event arrives. The API's CPU time
    (from /proc) over the writes, divided by the events its clients received, is the CPU per
    delivered event.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # inherited by the API and the clients
    if hard < streams + 200:
        raise SystemExit(
            f"{streams:,} streams need an open-file limit above {streams + 200:,} "
            f"(the hard RLIMIT_NOFILE is {hard:,}): raise it (ulimit -Hn, or nofile in limits.conf)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    api, base = await start_api(
        url,
        STOCKSTREAMER_API_MAX_STREAMS=str(streams + 10),
        STOCKSTREAMER_API_LIMIT_CONCURRENCY=str(streams + 100),
    )
    conn = await asyncpg.connect(url)
    events = batches * len(SYMBOLS)
    within = batches / rate + 60  # seconds a client reads for at most
    out = Path(tempfile.mkdtemp(prefix="stockstreamer-clients-"))
    procs: list[asyncio.subprocess.Process] = []
    try:
        idle = rss_bytes(api.pid)
        procs.append(await _clients(base, 1, events, out / "first.json", within, record=True))
        per = LOAD_PER_PROCESS
        shares = [min(per, streams - i) for i in range(0, streams, per)]
        loads = [_clients(base, n, events, out / f"{i}.json", within) for i, n in enumerate(shares)]
        procs += await asyncio.gather(*loads)
        procs.append(await _clients(base, 1, events, out / "last.json", within, record=True))
        rss = (rss_bytes(api.pid) - idle) / (streams + 2) * 1000 / 2**20
        cpu = cpu_seconds(api.pid)
        committed: dict[int, float] = {}
        await _write(conn, offset, committed, batches, rate)
        for proc in procs:
            assert proc.stdout is not None
            assert (await asyncio.wait_for(proc.stdout.readline(), within)).strip() == b"done"
        cpu = cpu_seconds(api.pid) - cpu
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 60)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
        await conn.close()
        api.stop()
    results = {f.stem: json.loads(f.read_text()) for f in out.glob("*.json")}
    delivered = sum(sum(r["received"]) for r in results.values())

    def lags(name: str) -> tuple[float, float]:
        times = results[name]["times"]
        return _summary([t - committed[int(i)] for i, t in times.items()])

    return FanOut(
        streams=streams,
        expected=(streams + 2) * events,
        delivered=delivered,
        cpu_us=cpu / delivered * 1e6,
        first=lags("first"),
        last=lags("last"),
        rss_per_1000=rss,
    )


def _fan_out_rows(f: FanOut, rate: float) -> list[str]:
    batches = "batch" if rate == 1 else "batches"
    load = f"{f.streams:,} streams on one process, {rate:g} {batches} of {len(SYMBOLS)} ticks/s"
    return [
        f"| api: {load}: API CPU per delivered event (target <= 5 µs) "
        f"| {f.delivered:,} of {f.expected:,} events delivered | {f.cpu_us:.1f} µs "
        f"| {'ok' if f.cpu_us <= 5 and f.delivered == f.expected else 'missed'} |",
        f"| api: {load}: commit-to-receipt p50 / p99, first subscriber vs last (subscribed after "
        f"the others) | {f.first[0]:.0f} / {f.first[1]:.0f} ms | {f.last[0]:.0f} / "
        f"{f.last[1]:.0f} ms | spread {f.last[0] - f.first[0]:+.0f} / "
        f"{f.last[1] - f.first[1]:+.0f} ms |",
        f"| api: {load}: API memory per 1,000 open streams (resident) | — "
        f"| {f.rss_per_1000:.1f} MiB | — |",
    ]


async def _both(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    await conn.execute(queries.ENSURE_STOCKS, SYMBOLS)
    await track(conn, SYMBOLS)
    await conn.close()
    poll50, poll99, poll_qps = await _polling(url)
    sse50, sse99, sse_qps = await _streaming(url)
    rows = [
        f"| api: commit-to-client latency p50 / p99, {CLIENTS} clients (polling each 1 s vs "
        f"LISTEN + fan-out) | {poll50:.0f} / {poll99:.0f} ms | {sse50:.1f} / {sse99:.1f} ms "
        f"| {poll50 / sse50:.0f}x |",
        f"| api: database queries per second, {CLIENTS} clients, {RATE:.0f} batches/s "
        f"| {poll_qps:.0f}/s | {sse_qps:.1f}/s | {poll_qps / max(sse_qps, 0.1):.1f}x |",
    ]
    for offset, (streams, batches, rate) in enumerate(FAN_OUTS, start=2):
        rows += _fan_out_rows(await _fan_out(url, streams, batches, rate, offset), rate)
    return rows


def run(url: str, scale: str = "default") -> list[str]:
    return asyncio.run(_both(url))
