"""The API as a real process for the benchmarks."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg

from services.runner.embedded_db import free_port
from services.runner.processes import ServiceProcess

# The API shows the watchlist's symbols only: a benchmark's are tracked as configured ones are.
TRACK = """
INSERT INTO watchlist (symbol, origin, state) SELECT unnest($1::text[]), 'config', 'live'
ON CONFLICT (symbol) DO NOTHING
"""


async def track(conn: asyncpg.Connection, symbols: list[str]) -> None:
    """Put `symbols` in the watchlist, live, as the fetcher does with its configured ones."""
    await conn.execute(TRACK, symbols)


def many_users(streams: int = 1000) -> dict[str, str]:
    """Settings for a benchmark whose clients, all on this machine, each stand for a user.

    One client may hold what the whole process did before per-client limits (`streams` streams,
    8 history slots, 20 connections), the process one more of each: the process's own limits
    stay what the benchmarks measure.
    """
    return {
        "STOCKSTREAMER_API_MAX_STREAMS": str(streams + 1),
        "STOCKSTREAMER_API_MAX_STREAMS_PER_CLIENT": str(streams),
        "STOCKSTREAMER_API_HISTORY_CONCURRENCY": "9",
        "STOCKSTREAMER_API_HISTORY_CONCURRENCY_PER_CLIENT": "8",
        "STOCKSTREAMER_API_POOL_SIZE": "21",
        "STOCKSTREAMER_API_POOL_SIZE_PER_CLIENT": "20",
        "STOCKSTREAMER_API_HISTORY_RATE": "10000",
        "STOCKSTREAMER_API_HISTORY_BURST": "100000",
    }


async def start_api(url: str, **settings: str) -> tuple[ServiceProcess, str]:
    """`python -m services.api` against `url` on a free port, once ready; and its base URL.

    One process unless `settings` say STOCKSTREAMER_API_WORKERS: the benchmarks measure its CPU.
    """
    port = free_port()
    streams = int(settings.get("STOCKSTREAMER_API_MAX_STREAMS", "1001")) - 1
    env = {
        "DATABASE_URL": url,
        "STOCKSTREAMER_API_PORT": str(port),
        "STOCKSTREAMER_LOG_LEVEL": "WARNING",
        "STOCKSTREAMER_API_WORKERS": "1",
        **many_users(streams),
        **settings,
    }
    api = ServiceProcess("services.api", env).start()
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(api.wait_http, f"{base}/readyz")
    except BaseException:
        api.stop()
        raise
    return api, base


def cpu_seconds(pid: int, children: bool = False) -> float:
    """CPU seconds of a process (and, with `children`, of its reaped children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(v) for v in fields[11 : 15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS), bytes; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def postgres_cpu(postmaster: int) -> float:
    """CPU seconds of PostgreSQL: the postmaster, its live backends and those that ended."""
    total = cpu_seconds(postmaster, children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == postmaster:
                total += cpu_seconds(int(entry.name))
    return total
