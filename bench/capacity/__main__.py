"""Capacity of one API process: REST users over every endpoint plus 1,000 SSE clients (locust).

    python -m bench.capacity                 # the full run: 2 minutes at 200 req/s, then a ramp
    python -m bench.capacity --quick         # 20 s steps, 100 streams: a smoke run

Starts a throwaway embedded PostgreSQL, the simulated fetcher (a week of history, a tick per
symbol per second) and one `python -m services.api` on loopback, then runs locust (from its own
venv, .venv/capacity, made from bench/capacity/requirements.lock) once per load step and prints
Markdown tables for BENCHMARKS.md: requests/s, p50/p99 latency and error rate per endpoint, and
the step at which the API starts answering 503 instead of slowing down.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.processes import cpu_seconds, many_users, postgres_cpu
from services.common.migrations import migrate
from services.runner.embedded_db import EmbeddedPostgres, free_port
from services.runner.processes import ServiceProcess

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VENV = ROOT / ".venv" / "capacity"
LOCUST = VENV / "bin" / "locust"
SYMBOLS = "GE,AMZN,NVDA,INTC,AAPL,NFLX"
SPAWN_RATE = 250  # users started per second


@dataclass(frozen=True)
class Step:
    rest_rate: int  # REST requests per second asked for (one user per request per second)
    seconds: int
    streams: int


def ensure_locust() -> None:
    """Locust in its own venv: its pins (gevent, Flask, pytest) stay out of the project's."""
    lock = HERE / "requirements.lock"
    stamp = VENV / ".installed"
    if stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)  # noqa: S603
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--disable-pip-version-check", "-r", str(lock)], check=True)  # noqa: S603
    stamp.touch()


def split_cpus() -> tuple[set[int], set[int]]:
    """The last CPU for the load generator, the others for the stack under test."""
    cpus = sorted(os.sched_getaffinity(0))
    return set(cpus[:-1]), {cpus[-1]}


def raise_open_files() -> None:
    """Thousands of sockets: lift the soft descriptor limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def scrape(base: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    text = httpx.get(f"{base}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The q-quantile of a cumulative histogram (upper bound, value), interpolated as Prometheus."""
    total = buckets[-1][1]
    if not total:
        return math.nan
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def lag_quantiles(
    before: dict, after: dict, name: str, skip_route: str | None = None
) -> tuple[float, float]:
    """p50 and p99 (ms) of a histogram's observations between two scrapes (all label sets)."""

    def buckets(page: dict) -> Counter[float]:
        out: Counter[float] = Counter()
        for labels, v in page.get(f"{name}_bucket", []):
            if skip_route is None or labels.get("route") != skip_route:
                out[float(labels["le"])] += v
        return out

    b, a = buckets(before), buckets(after)
    delta = sorted((le, a[le] - b.get(le, 0.0)) for le in a)
    return quantile(delta, 0.5) * 1000, quantile(delta, 0.99) * 1000


def locust_cpu() -> float:
    """CPU seconds of the locust processes that have ended (they are waited for each step)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _locust(
    base: str, user: str, users: int, seconds: float, prefix: Path, cpus: set[int] | None
) -> subprocess.Popen[str]:
    """One headless locust process running `users` of one user class for `seconds`."""
    env = {
        "PATH": "/usr/bin:/bin",
        "CAPACITY_REST_RATE": "1.0",
        "CAPACITY_SYMBOLS": SYMBOLS,
        "CAPACITY_STREAMS": str(users),
        "CAPACITY_SUMMARY": f"{prefix}_summary.json",
    }
    proc = subprocess.Popen(  # noqa: S603
        [
            str(LOCUST),
            "-f",
            str(HERE / "locustfile.py"),
            "--headless",
            "--host",
            base,
            "--users",
            str(users),
            "--spawn-rate",
            str(SPAWN_RATE),
            "--run-time",
            f"{math.ceil(seconds)}s",
            "--reset-stats",
            "--csv",
            str(prefix),
            "--only-summary",
            "--stop-timeout",
            "5",
            "--loglevel",
            "WARNING",
            user,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)  # before it starts its users
    return proc


def _results(prefix: Path, stderr: str) -> tuple[list[dict[str, str]], Counter[str], set[str]]:
    with open(f"{prefix}_stats.csv", newline="") as f:
        stats = [row for row in csv.DictReader(f) if row["Name"] != "Aggregated"]
    failures: Counter[str] = Counter()
    with open(f"{prefix}_failures.csv", newline="") as f:
        for row in csv.DictReader(f):
            failures[row["Error"]] += int(row["Occurrences"])
    warnings = {ln.split(": ", 1)[-1] for ln in stderr.splitlines() if "CPU usage" in ln}
    return stats, failures, warnings


def run_step(
    base: str, step: Step, out: Path, cpus: set[int] | None
) -> tuple[list[dict[str, str]], dict[str, float], Counter[str], str]:
    """One step (load generators on `cpus` if given): per-endpoint stats, the REST summary,
    failures by error, locust's warnings.

    The streams and the REST users run in two locust processes: in one, a REST response that
    arrives while a thousand streams' events are being read would wait for them, and the wait
    would be measured as the API's.
    """
    prefix = out / f"rest{step.rest_rate}-streams{step.streams}"
    sse = out / f"rest{step.rest_rate}-streams{step.streams}-sse"
    streams_proc = None
    if step.streams:
        spawn = step.streams / SPAWN_RATE
        streams_proc = _locust(
            base,
            "StreamUser",
            step.streams,
            spawn + 5 + step.seconds,
            sse,
            cpus,
        )
        deadline = time.monotonic() + spawn + 60
        while open_streams(base) < step.streams:
            if time.monotonic() > deadline or streams_proc.poll() is not None:
                break  # measured as it is: the step reports the streams it had
            time.sleep(0.5)
    rest_proc = _locust(base, "RestUser", step.rest_rate, step.seconds, prefix, cpus)
    # Half-way through the step: how many streams the API holds open.
    time.sleep(step.rest_rate / SPAWN_RATE + step.seconds / 2)
    streams = open_streams(base)
    _, stderr = rest_proc.communicate(timeout=step.seconds + 180)
    stats, failures, warnings = _results(prefix, stderr)
    summary: dict[str, float] = json.loads(Path(f"{prefix}_summary.json").read_text())
    summary["open_streams"] = streams
    summary["events"] = 0
    if streams_proc is not None:
        _, stderr = streams_proc.communicate(timeout=step.seconds + 240)
        sse_stats, sse_failures, sse_warnings = _results(sse, stderr)
        stats += sse_stats
        failures += sse_failures
        warnings |= sse_warnings
        summary["events"] = json.loads(Path(f"{sse}_summary.json").read_text())["events"]
    return stats, summary, failures, "; ".join(sorted(warnings))


def open_streams(base: str) -> float:
    return sum(v for _, v in scrape(base).get("stockstreamer_api_open_streams", []))


def table(stats: list[dict[str, str]]) -> list[str]:
    rows = [
        "| endpoint | requests | requests/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for row in stats:
        name = row["Name"] if row["Type"] != "SSE" else f"{row['Name']} (SSE)"
        count, failed = int(row["Request Count"]), int(row["Failure Count"])
        rate = float(row["Requests/s"])
        ratio = f"{failed / count:.2%}" if count else "–"
        rows.append(f"| {name} | {count:,} | {rate:,.1f} | {row['50%']} | {row['99%']} | {ratio} |")
    return rows


async def prepare(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        ticks = await conn.fetchval("SELECT count(*) FROM ticks")
        print(f"database: {ticks:,} ticks", flush=True)
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short steps, 100 streams")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=len(os.sched_getaffinity(0)) >= 2,
        help="the load generator on a core of its own, the stack on the others "
        "(default with 2 or more cores)",
    )
    args = parser.parse_args()
    stack_cpus, load_cpus = split_cpus() if args.pin else (None, None)
    if stack_cpus:
        # every process started from here on (PostgreSQL, fetcher, API) inherits it
        os.sched_setaffinity(0, stack_cpus)
    streams = 100 if args.quick else 1000
    main_seconds, ramp_seconds = (20, 15) if args.quick else (120, 40)
    # The run first; then REST alone (what the streams cost); then a ramp to find where
    # latency breaks and 503s start.
    steps = [
        Step(200, main_seconds, streams),
        Step(200, ramp_seconds, 0),
        *(Step(rate, ramp_seconds, streams) for rate in (50, 100, 300, 400, 800)),
    ]
    ensure_locust()
    raise_open_files()
    work = Path(tempfile.mkdtemp(prefix="stockstreamer-capacity-"))
    server = EmbeddedPostgres(work / "data", port=free_port())
    server.start()
    procs: list[ServiceProcess] = []
    try:
        url = asyncio.run(server.create_database("capacity"))
        migrate(url)
        fetcher = ServiceProcess(
            "services.fetcher",
            {
                "DATABASE_URL": url,
                "STOCKSTREAMER_SYMBOLS": SYMBOLS,
                "STOCKSTREAMER_BACKFILL": "7d",
                "STOCKSTREAMER_FETCHER_METRICS_PORT": "0",
            },
        ).start()
        procs.append(fetcher)
        deadline = time.monotonic() + 180
        while "history backfilled" not in fetcher.output:
            assert time.monotonic() < deadline, f"no backfill:\n{fetcher.output}"
            time.sleep(1)
        asyncio.run(prepare(url))
        port = free_port()
        api = ServiceProcess(
            "services.api",
            {
                "DATABASE_URL": url,
                "STOCKSTREAMER_API_PORT": str(port),
                "STOCKSTREAMER_LOG_LEVEL": "WARNING",
                # every locust user comes from this machine, as one client
                **many_users(),
            },
        ).start()
        procs.append(api)
        base = f"http://127.0.0.1:{port}"
        api.wait_http(f"{base}/readyz")

        ramp = [
            "| streams | REST asked | REST achieved | REST p50 ms | REST p99 ms "
            "| in the API p50 / p99 ms | errors | 503s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])

        def clocks() -> dict[str, float]:
            return {
                "API": cpu_seconds(api.pid),
                "PostgreSQL": postgres_cpu(postmaster),
                "fetcher": cpu_seconds(fetcher.pid),
                "load generator": locust_cpu(),
                "wall": time.monotonic(),
            }

        if stack_cpus and load_cpus:
            print(f"stack on CPUs {sorted(stack_cpus)}, load generator on {sorted(load_cpus)}")
        for step in steps:
            before, cpu_before = scrape(base), clocks()
            stats, rest, failures, warned = run_step(base, step, work, load_cpus)
            stats = [r for r in stats if r["Request Count"] != "0"]
            after, cpu_after = scrape(base), clocks()
            wall = cpu_after.pop("wall") - cpu_before.pop("wall")
            used = ", ".join(f"{k} {(cpu_after[k] - cpu_before[k]) / wall:.2f}" for k in cpu_after)
            server_p50, server_p99 = lag_quantiles(
                before, after, "stockstreamer_api_request_seconds", skip_route="/api/v1/stream"
            )
            refused = sum(n for error, n in failures.items() if "503" in error)
            p50, p99 = lag_quantiles(before, after, "stockstreamer_api_commit_to_send_seconds")
            print(
                f"\n### {step.rest_rate} REST req/s asked, {step.streams} SSE clients, "
                f"{step.seconds} s\n"
            )
            print("\n".join(table(stats)))
            print(
                f"\nAPI commit-to-send lag over the step: p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
                f"streams open mid-step: {rest['open_streams']:,.0f}; price events received "
                f"by the streams: {rest['events']:,.0f}"
            )
            print(
                f"REST time to headers inside the API: p50 {server_p50:.1f} ms, "
                f"p99 {server_p99:.1f} ms; CPU over the step (cores): {used}"
            )
            if failures:
                print("failures: " + "; ".join(f"{e} ×{n}" for e, n in failures.most_common(5)))
            if warned:
                print(f"locust: {warned}")
            ratio = rest["failures"] / rest["requests"] if rest["requests"] else 0.0
            ramp.append(
                f"| {step.streams:,} | {step.rest_rate}/s | {rest['rps']:,.0f}/s "
                f"| {rest['p50']:.0f} | {rest['p99']:.0f} | {server_p50:.0f} / {server_p99:.0f} "
                f"| {ratio:.2%} | {refused:,} |"
            )
        print("\n### Ramp\n")
        print("\n".join(ramp))
    finally:
        for proc in reversed(procs):
            proc.__exit__()
        server.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
