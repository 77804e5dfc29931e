"""The stack under test for the capacity run, and what each of its processes uses (from /proc)."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.processes import cpu_seconds, many_users, postgres_cpu
from services.api.config import ApiSettings
from services.runner.embedded_db import free_port
from services.runner.processes import ServiceProcess

# The kernel spreads connections over the API's workers unevenly, and each worker holds its share
# of the stream cap: a default cap is used if it leaves MARGIN, else it is raised to SPREAD times
# the streams asked.
MARGIN = 1.1
SPREAD = 1.2
HEAD = "SELECT coalesce(max(event_id), 0) FROM ticks"

Metrics = dict[str, list[tuple[dict[str, str], float]]]


def default_of(name: str) -> Any:
    return ApiSettings.model_fields[name].get_default(call_default_factory=True)


def api_env(streams: int, workers: int | None) -> tuple[dict[str, str], str]:
    """The API's settings for steps of up to `streams` (and a probe), and how they were chosen.

    The defaults when they admit the streams; else the stream cap and uvicorn's concurrency limit
    raised. Per-client limits are always lifted: every load client comes from one address.
    """
    env = {"STOCKSTREAMER_LOG_LEVEL": "WARNING"}
    if workers:
        env["STOCKSTREAMER_API_WORKERS"] = str(workers)
    cap, limit = default_of("api_max_streams"), default_of("api_limit_concurrency")
    how = f"the default stream cap ({cap:,}) and limit_concurrency ({limit:,})"
    if cap < (streams + 1) * MARGIN:
        raised = math.ceil((streams + 1) * SPREAD)
        # the default's room for requests beside the streams, kept
        limit, cap = max(limit, raised + limit - cap), raised
        how = f"the stream cap raised to {cap:,} and limit_concurrency to {limit:,}"
    env |= many_users(cap - 1)  # the cap, and per-client shares of one less
    env["STOCKSTREAMER_API_LIMIT_CONCURRENCY"] = str(limit)
    return env, how


class Api:
    """`python -m services.api` on a free port; restarted when a step needs other settings."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.proc: ServiceProcess | None = None
        self.env: dict[str, str] = {}
        self.base = ""

    def ensure(self, env: dict[str, str]) -> None:
        if self.proc is not None and env == self.env:
            return
        self.stop()
        port = free_port()
        self.env = env
        self.proc = ServiceProcess(
            "services.api",
            {"DATABASE_URL": self.url, "STOCKSTREAMER_API_PORT": str(port), **env},
        ).start()
        self.base = f"http://127.0.0.1:{port}"
        self.proc.wait_http(f"{self.base}/readyz", timeout=60)

    def processes(self) -> list[tuple[str, int]]:
        """(label, pid) of the API: a supervisor and the workers it forked, else one process.

        Workers are the children running the supervisor's own command line (forked); any other
        child (a helper it started) is listed apart, its CPU counted too.
        """
        assert self.proc is not None
        pid = self.proc.pid
        own = cmdline(pid)
        kids = sorted(children(pid), key=started)
        workers = [c for c in kids if own and cmdline(c) == own]
        others = [c for c in kids if c not in workers]
        helpers = [(f"API helper {i}", c) for i, c in enumerate(others, 1)]
        if not workers:
            return [("API", pid), *helpers]
        return [
            ("API supervisor", pid),
            *((f"API worker {i}", w) for i, w in enumerate(workers, 1)),
            *helpers,
        ]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.__exit__()
            self.proc = None


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (which may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def started(pid: int) -> int:
    try:
        return int(_stat(pid)[19])
    except (OSError, ValueError, IndexError):
        return 0


def pss_mib(pids: Sequence[int]) -> float:
    """Proportional set size (shared pages split between their users), summed, in MiB."""
    kib = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                kib += int(line.split()[1])
                break
    return kib / 1024


def machine_busy() -> float:
    """CPU seconds every core of the machine has been busy, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Db:
    """The harness's own connection: the window's edges and the ticks committed in it."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self.loop.run_until_complete(asyncpg.connect(url))

    def value(self, query: str, *args: object) -> Any:
        return self.loop.run_until_complete(self.conn.fetchval(query, *args))

    def wait_head(self, at_least: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.value(HEAD) < at_least:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no tick reached event id {at_least} in {timeout:.0f} s")
            time.sleep(0.1)

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


class Meter:
    """CPU seconds and memory of every process of the run."""

    def __init__(self, api: Api, postmaster: int, fetcher: int) -> None:
        self.api, self.postmaster, self.fetcher = api, postmaster, fetcher

    def _pids(self, load: dict[str, int]) -> dict[str, int]:
        return {
            **dict(self.api.processes()),
            "PostgreSQL (every backend)": self.postmaster,
            "fetcher": self.fetcher,
            **load,
            "this harness (scrapes, database polls)": os.getpid(),
        }

    def cpu(self, load: dict[str, int]) -> dict[str, tuple[int, float]]:
        out = {}
        for label, pid in self._pids(load).items():
            seconds = postgres_cpu(pid) if label.startswith("PostgreSQL") else cpu_seconds(pid)
            out[label] = (pid, seconds)
        return out

    def memory(self, load: dict[str, int]) -> dict[str, float]:
        out = {}
        for label, pid in self._pids(load).items():
            out[label] = pss_mib([pid, *children(pid)] if label.startswith("PostgreSQL") else [pid])
        return out


def scrape(base: str) -> Metrics:
    out: Metrics = {}
    text = httpx.get(f"{base}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def total(page: Metrics, name: str) -> float:
    return sum(v for _, v in page.get(name, []))
