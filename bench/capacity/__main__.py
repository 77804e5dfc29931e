"""Capacity of the API on this machine: 10,000 live viewers, REST beside 1,000 streams, a ramp.

    python -m bench.capacity                      # every step (about 10 minutes)
    python -m bench.capacity --quick              # short steps at small scale: a smoke run
    python -m bench.capacity --steps streams10k   # chosen steps only (streams10k, rest, ramp)

Starts a throwaway embedded PostgreSQL, the simulated fetcher (a week of history, then a tick per
symbol per second, 6 symbols) and `python -m services.api` on loopback with its default process
count (STOCKSTREAMER_API_WORKERS, or `--workers`), then runs each step and prints Markdown tables
for BENCHMARKS.md:

- streams10k: 10,000 SSE clients and next to no REST. The clients are lean raw-asyncio readers
  (bench/capacity/streams.py) in processes of their own; once all are open a probe client
  subscribes last. Every client counts the price events of a window of event ids, which must equal
  the live ticks committed in it (counted in the database); no stream may be cut (client-side EOF,
  the API's slow-client counter); the probe's commit-to-receipt p99 (commit: the `prices` NOTIFY
  reaching the probe's own LISTEN connection) must stay within 250 ms.
- rest: 200 REST requests/s (locust, from its own venv .venv/capacity made from
  bench/capacity/requirements.lock) beside 1,000 streams and the probe; target REST p99 < 100 ms.
- ramp: REST alone at 200/s, then 1,000 streams beside 50 to 800 REST requests/s, to find where
  latency breaks and 503s start.

Every step reports the CPU (cores) and memory (PSS) of each process — the API's supervisor and
each worker (its children in /proc; none: one process), PostgreSQL, the fetcher, every load
generator — and the whole machine's CPU from /proc/stat, and names what saturates first. Nothing
is pinned by default: on a 2-core machine the load generators share the cores with the stack,
and their CPU is reported beside it (`--pin` keeps them on the last core, the stack on the rest).

The platform must allow the sockets: the clients and the API hold one descriptor per stream, and
every process raises its soft RLIMIT_NOFILE to the hard limit (`ulimit -Hn`; the run exits with a
message when it is below the streams asked plus 1,024). Every stream comes from 127.0.0.1 to one
port, so each needs an ephemeral port: net.ipv4.ip_local_port_range gives about 28,000 by default
(checked too). The probe connects from 127.0.0.2, a client address of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.capacity.load import Clients, Locust, ensure_locust
from bench.capacity.stack import HEAD, Api, Db, Meter, Metrics, api_env, machine_busy, scrape
from bench.capacity.stack import total as metric_total
from bench.capacity.streams import raise_open_files
from services.common.migrations import migrate
from services.runner.embedded_db import EmbeddedPostgres, free_port
from services.runner.processes import ServiceProcess

SYMBOLS = "GE,AMZN,NVDA,INTC,AAPL,NFLX"
STEPS = ("streams10k", "rest", "ramp")
STREAMS_PER_PROCESS = 2500  # lean clients per load process
OPEN_TIMEOUT = 300.0  # seconds the load processes try to open their streams (their default)
PROGRESS = 10.0  # seconds between two progress lines while the streams open
# The window's edges are event ids this many ticks ahead of the head when announced (3 s at the
# simulator's 6 ticks a second): every client must learn them before the ids reach it.
WINDOW_AHEAD = 18
SATURATED = 0.9  # share of a core (one process) or of every core (the machine) that is saturation
REST_P99_MS = 100.0
PROBE_P99_MS = 250.0
TICKS = "SELECT count(*) FROM ticks"
LIVE_BETWEEN = (
    "SELECT count(*) FROM ticks WHERE event_id > $1 AND event_id <= $2 AND NOT backfilled"
)
SLOW_CUTS = "stockstreamer_api_slow_client_disconnects_total"


@dataclass(frozen=True)
class Step:
    name: str
    rest_rate: int  # REST requests per second asked for (one user per request per second)
    streams: int
    seconds: int


def steps_for(names: Sequence[str], quick: bool, streams: int) -> list[Step]:
    out: list[Step] = []
    for name in names:
        if name == "streams10k":
            out.append(Step(name, 0, streams, 15 if quick else 60))
        elif name == "rest":
            out.append(Step(name, 200, 100 if quick else 1000, 20 if quick else 120))
        elif name == "ramp":
            seconds, many = (10, 100) if quick else (40, 1000)
            rates = (100, 400) if quick else (50, 100, 300, 400, 800)
            out.append(Step(name, 200, 0, seconds))
            out.extend(Step(name, rate, many, seconds) for rate in rates)
    return out


@dataclass
class Stack:
    db: Db
    api: Api
    meter: Meter
    work: Path
    url: str
    stream_procs: int | None
    load_cpus: set[int] | None
    workers: int | None


@dataclass
class Window:
    """What one step measured between the window's edges."""

    seconds: float
    before: Metrics
    after: Metrics
    cpu: dict[str, tuple[int, float]]  # label -> (pid, cores)
    machine: float  # cores busy, every process of the machine
    memory: dict[str, float]
    expected: int = 0  # live ticks committed inside the window
    reports: list[dict[str, Any]] = field(default_factory=list)  # one per client process
    opening: float = 0.0
    issues: list[str] = field(default_factory=list)
    locust: Locust | None = None


@dataclass
class Result:
    step: Step
    lines: list[str] = field(default_factory=list)  # the step's Markdown
    row: dict[str, str] = field(default_factory=dict)  # its row of the summary
    missed: list[str] = field(default_factory=list)  # targets it missed
    saturated: str = ""


def progress(clients: list[Clients], answers: dict[Clients, dict[str, Any]]) -> str:
    """How many streams are open so far, and how many openings were refused."""
    refused: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    open_now = 0
    for c in clients:
        state = answers.get(c) or c.progress
        open_now += state.get("open", state.get("opening", 0))
        refused.update(c.progress["refused"])
        errors.update(c.progress["errors"])
    total = sum(c.count for c in clients)
    return f"{open_now:,} of {total:,} streams open; refused {dict(refused)}, errors {dict(errors)}"


def open_clients(stack: Stack, streams: int) -> tuple[list[Clients], float, list[str]]:
    """The load's streams in processes of their own, then the probe once they are all open."""
    k = stack.stream_procs or max(1, math.ceil(streams / STREAMS_PER_PROCESS))
    sizes = [streams // k + (i < streams % k) for i in range(k)]
    began = time.monotonic()
    base, cpus = stack.api.base, stack.load_cpus
    clients = [
        Clients(f"stream clients {i} ({n:,})", base, n, cpus) for i, n in enumerate(sizes, 1)
    ]
    try:
        answers: dict[Clients, dict[str, Any]] = {}
        next_say = began + PROGRESS
        while len(answers) < len(clients):
            for c in clients:
                if c not in answers and (answer := c.opened(timeout=0.5)) is not None:
                    answers[c] = answer
            if (now := time.monotonic()) > began + OPEN_TIMEOUT + 60:
                raise RuntimeError(f"the streams did not open in {OPEN_TIMEOUT + 60:.0f} s")
            if now >= next_say:  # on stderr: the tables stay clean on stdout
                print(f"{now - began:4.0f} s: {progress(clients, answers)}", file=sys.stderr)
                next_say += PROGRESS
        opened = [answers[c] for c in clients]
        clients.append(Clients("probe (1 stream, LISTEN)", base, 1, cpus, probe_url=stack.url))
        opened.append(clients[-1].expect(timeout=120))
    except BaseException:
        for c in clients:
            c.close()
        raise
    issues = [
        f"{c.label}: only {o['open']:,} opened"
        for c, o in zip(clients, opened, strict=True)
        if o["open"] < c.count
    ]
    return clients, time.monotonic() - began, issues


def measure(stack: Stack, step: Step) -> Window:
    """Open the streams, count over a window of event ids while the REST load runs, close."""
    clients: list[Clients] = []
    opening, issues = 0.0, list[str]()
    try:
        if step.streams:
            clients, opening, issues = open_clients(stack, step.streams)
        load = {c.label: c.proc.pid for c in clients}
        first = stack.db.value(HEAD) + WINDOW_AHEAD
        for c in clients:
            c.send(f"start {first}")
        stack.db.wait_head(first)
        before, cpu_before, busy = scrape(stack.api.base), stack.meter.cpu(load), machine_busy()
        began = time.monotonic()
        locust = None
        if step.rest_rate:
            prefix = stack.work / f"{step.name}-rest{step.rest_rate}-streams{step.streams}"
            locust = Locust(stack.api.base, step.rest_rate, step.seconds, prefix, stack.load_cpus)
            locust_cpu = locust.finish(timeout=step.seconds + 180)
        else:
            time.sleep(step.seconds)
        last = stack.db.value(HEAD) + WINDOW_AHEAD
        for c in clients:
            c.send(f"stop {last}")
        stack.db.wait_head(last)
        seconds = time.monotonic() - began
        machine = (machine_busy() - busy) / seconds
        cpu_after = stack.meter.cpu(load)
        memory = stack.meter.memory(load)
        reports = [c.expect(timeout=60) for c in clients]  # once every stream reached `last`
        after = scrape(stack.api.base)
        expected = stack.db.value(LIVE_BETWEEN, first, last)
    finally:
        for c in clients:
            c.close()
    cpu = {}
    for label, (pid, end) in cpu_after.items():
        start = cpu_before[label][1] if cpu_before.get(label, (0, 0))[0] == pid else 0.0
        cpu[label] = (pid, (end - start) / seconds)
    if locust is not None:
        cpu["locust (REST users)"] = (locust.proc.pid, locust_cpu / seconds)
    return Window(
        seconds, before, after, cpu, machine, memory, expected, reports, opening, issues, locust
    )


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The q-quantile of a cumulative histogram (upper bound, value), interpolated as Prometheus."""
    if not buckets or not buckets[-1][1]:
        return math.nan
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def lag_quantiles(
    before: Metrics, after: Metrics, name: str, skip_route: str | None = None
) -> tuple[float, float]:
    """p50 and p99 (ms) of a histogram's observations between two scrapes (all label sets)."""

    def buckets(page: Metrics) -> dict[float, float]:
        out: dict[float, float] = {}
        for labels, v in page.get(f"{name}_bucket", []):
            if skip_route is None or labels.get("route") != skip_route:
                le = float(labels["le"])
                out[le] = out.get(le, 0.0) + v
        return out

    b, a = buckets(before), buckets(after)
    delta = sorted((le, a[le] - b.get(le, 0.0)) for le in a)
    return quantile(delta, 0.5) * 1000, quantile(delta, 0.99) * 1000


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return math.nan
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def rest_report(result: Result, w: Window) -> None:
    assert w.locust is not None
    stats, rest, failures, warned = w.locust.results()
    in_p50, in_p99 = lag_quantiles(
        w.before, w.after, "stockstreamer_api_request_seconds", skip_route="/api/v1/stream"
    )
    refused = {code: sum(n for e, n in failures.items() if code in e) for code in ("503", "429")}
    ratio = rest["failures"] / rest["requests"] if rest["requests"] else 0.0
    lines = result.lines
    lines += ["| endpoint | requests | requests/s | p50 ms | p99 ms | errors |"]
    lines += ["|---|---|---|---|---|---|"]
    for r in stats:
        count, failed = int(r["Request Count"]), int(r["Failure Count"])
        lines.append(
            f"| {r['Name']} | {count:,} | {float(r['Requests/s']):,.1f} | {r['50%']} "
            f"| {r['99%']} | {failed / count:.2%} |"
        )
    lines += [
        "",
        f"REST over every endpoint: {rest['rps']:,.0f} requests/s, p50 {rest['p50']:.0f} ms, "
        f"p99 {rest['p99']:.0f} ms (target < {REST_P99_MS:.0f}); inside the API (time to "
        f"headers) p50 {in_p50:.1f} ms, p99 {in_p99:.1f} ms; errors {ratio:.2%} "
        f"(503: {refused['503']:,}, 429: {refused['429']:,}).",
    ]
    if failures:
        lines.append("Failures: " + "; ".join(f"{e} ×{n}" for e, n in failures.most_common(5)))
    if warned:
        lines.append(f"locust: {warned}")
    lines.append("")
    row = result.row
    row["REST achieved"] = f"{rest['rps']:,.0f}/s"
    row["REST p50 / p99 ms"] = f"{rest['p50']:.0f} / {rest['p99']:.0f}"
    row["in the API p50 / p99 ms"] = f"{in_p50:.0f} / {in_p99:.0f}"
    row["errors (503 / 429)"] = f"{ratio:.2%} ({refused['503']:,} / {refused['429']:,})"
    if rest["p99"] >= REST_P99_MS:
        result.missed.append(f"REST p99 {rest['p99']:.0f} ms")
    if rest["failures"]:
        result.missed.append(f"REST errors {ratio:.2%}")


def streams_report(result: Result, w: Window) -> None:
    streams = result.step.streams + 1
    counts: Counter[int] = Counter()
    refused: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for r in w.reports:
        counts.update({int(k): v for k, v in r["counts"].items()})
        refused.update(r["refused"])
        errors.update(r["errors"])
    every = counts.get(w.expected, 0)
    opened = sum(r["open"] for r in w.reports)
    eof = sum(r["eof"] for r in w.reports)
    slow = metric_total(w.after, SLOW_CUTS) - metric_total(w.before, SLOW_CUTS)
    disorder = sum(r["disorder"] for r in w.reports)
    behind = sum(r["behind"] for r in w.reports)
    lags = w.reports[-1]["lags_ms"]  # the probe's
    p50, p99 = percentile(lags, 0.5), percentile(lags, 0.99)
    api_p50, api_p99 = lag_quantiles(w.before, w.after, "stockstreamer_api_commit_to_send_seconds")
    result.lines += [
        "| streams (load + probe) | opened in | price events committed in the window "
        "| open streams that received every one | cut: EOF / slow | out of order "
        "| probe commit-to-receipt p50 / p99 ms | API commit-to-send p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|",
        f"| {streams:,} | {w.opening:.0f} s | {w.expected:,} in {w.seconds:.0f} s "
        f"({len(lags)} commits timed) | {every:,} of {opened:,} | {eof:,} / {slow:.0f} "
        f"| {disorder:,} | {p50:.0f} / {p99:.0f} | {api_p50:.0f} / {api_p99:.0f} |",
        "",
    ]
    gauge = metric_total(w.after, "stockstreamer_api_open_streams")
    notes = [f"open_streams at the end: {gauge:,.0f}"]
    if short := sorted((k, v) for k, v in counts.items() if k != w.expected):
        notes.append(
            "clients short of the count: " + ", ".join(f"{v:,} got {k:,}" for k, v in short)
        )
    if behind:
        notes.append(f"{behind:,} streams had not reached the window's end 30 s after it")
    if refused:
        notes.append(
            "refused while opening, then retried: "
            + ", ".join(f"{status} ×{n:,}" for status, n in sorted(refused.items()))
        )
    if errors:
        notes.append("client errors: " + ", ".join(f"{e} ×{n:,}" for e, n in errors.items()))
    result.lines += ["; ".join([*notes, *w.issues]) + ".", ""]
    result.row["open"] = f"{opened:,}"
    result.row["every event"] = f"{every:,}"
    result.row["cut"] = f"{eof + slow:,.0f}"
    result.row["probe p50 / p99 ms"] = f"{p50:.0f} / {p99:.0f}"
    if opened < streams:
        result.missed.append(f"{streams - opened:,} streams never opened")
    # a window announced late makes the counts unsound; failed openings are counted above
    if every < opened or any(not e.startswith("opening:") for e in errors):
        result.missed.append(f"{opened - every:,} open streams without every event")
    if eof or slow:
        result.missed.append(f"{eof + slow:,.0f} streams cut")
    if not p99 <= PROBE_P99_MS:
        result.missed.append(f"probe p99 {p99:.0f} ms")


def cpu_report(result: Result, w: Window) -> None:
    cores = os.cpu_count() or 1
    lines = result.lines
    lines += [f"CPU and memory over the {w.seconds:.0f} s window:", ""]
    lines += ["| process | pid | CPU (cores) | memory (PSS MiB) |", "|---|---|---|---|"]
    for label, (pid, used) in w.cpu.items():
        mem = f"{w.memory[label]:,.0f}" if label in w.memory else ""
        lines.append(f"| {label} | {pid} | {used:.2f} | {mem} |")
    other = max(0.0, w.machine - sum(used for _, used in w.cpu.values()))
    lines.append(f"| other processes of the machine | | {other:.2f} | |")
    lines += [f"| the machine (/proc/stat) | | {w.machine:.2f} of {cores} | |", ""]
    # One process can use one core (one event loop); PostgreSQL is many processes.
    single = {k: used for k, (_, used) in w.cpu.items() if not k.startswith(("PostgreSQL", "this"))}
    hot = max(single, key=lambda k: single[k])
    if single[hot] >= SATURATED:
        result.saturated = f"{hot} CPU {single[hot]:.2f} cores"
    elif w.machine >= SATURATED * cores:
        result.saturated = (
            f"the machine's CPU ({w.machine:.2f} of {cores} cores, {other:.2f} of them "
            "processes outside the run)"
        )
    else:
        result.saturated = (
            f"nothing (busiest: {hot} {single[hot]:.2f} cores; machine {w.machine:.2f} of {cores})"
        )
    lines.append(f"Saturated first: {result.saturated}.")
    if result.missed:
        lines.append(f"Missed: {', '.join(result.missed)}.")
    lines.append("")
    busiest = max(w.cpu, key=lambda k: w.cpu[k][1])
    result.row["busiest (cores)"] = f"{busiest} {w.cpu[busiest][1]:.2f}"
    result.row["machine CPU"] = f"{w.machine:.2f}"


def run_step(stack: Stack, step: Step, env: dict[str, str], how: str) -> Result:
    stack.api.ensure(env)
    result = Result(step)
    procs = stack.api.processes()
    workers = [str(pid) for label, pid in procs if "worker" in label]
    shape = (
        f"a supervisor (pid {procs[0][1]}) and {len(workers)} workers ({', '.join(workers)})"
        if workers
        else f"one process (pid {procs[0][1]})"
    )
    result.lines += [
        f"### {step.name}: {step.streams:,} SSE clients{' and a probe' if step.streams else ''}, "
        f"{step.rest_rate} REST requests/s asked, {step.seconds} s",
        "",
        f"API: {shape}; {how}. Load average at the start: "
        + " ".join(f"{v:.2f}" for v in os.getloadavg())
        + ".",
        "",
    ]
    w = measure(stack, step)
    result.row |= {"step": step.name, "streams": f"{step.streams:,}"}
    result.row["REST asked"] = f"{step.rest_rate}/s"
    if step.rest_rate:
        rest_report(result, w)
    if step.streams:
        streams_report(result, w)
    cpu_report(result, w)
    return result


def summary(results: list[Result]) -> list[str]:
    order = [
        "step", "streams", "REST asked", "REST achieved", "REST p50 / p99 ms",
        "in the API p50 / p99 ms", "errors (503 / 429)", "open", "every event", "cut",
        "probe p50 / p99 ms", "busiest (cores)", "machine CPU",
    ]  # fmt: skip
    columns = [c for c in order if any(c in r.row for r in results)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r.row.get(c, "–") for c in columns) + " |" for r in results]
    lines.append("")
    for name in dict.fromkeys(r.step.name for r in results):
        missed = next((r for r in results if r.step.name == name and r.missed), None)
        if missed is None:
            lines.append(f"- {name}: every target met.")
        else:
            s = missed.step
            lines.append(
                f"- {name}: first miss at {s.streams:,} streams and {s.rest_rate} REST "
                f"requests/s ({', '.join(missed.missed)}); saturated first: {missed.saturated}."
            )
    return lines


def check_platform(streams: int) -> None:
    """Exit with what to change when this machine cannot hold the streams asked for."""
    raise_open_files(streams + 1024)  # the API's own need, should it run as one process
    path = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low, high = (int(v) for v in path.read_text().split())
    if high - low + 1 < streams + 2000:
        raise SystemExit(
            f"{high - low + 1:,} ephemeral ports (net.ipv4.ip_local_port_range {low} {high}) "
            f"for {streams:,} streams from one address: widen the range, e.g. "
            "sysctl -w net.ipv4.ip_local_port_range='1024 65000'"
        )


def split_cpus() -> tuple[set[int], set[int]]:
    """The last CPU for the load generators, the others for the stack under test."""
    cpus = sorted(os.sched_getaffinity(0))
    return set(cpus[:-1]), {cpus[-1]}


def start_fetcher(url: str) -> ServiceProcess:
    fetcher = ServiceProcess(
        "services.fetcher",
        {
            "DATABASE_URL": url,
            "STOCKSTREAMER_SYMBOLS": SYMBOLS,
            "STOCKSTREAMER_BACKFILL": "7d",
            "STOCKSTREAMER_FETCHER_METRICS_PORT": "0",
        },
    ).start()
    deadline = time.monotonic() + 180
    while "history backfilled" not in fetcher.output:
        if time.monotonic() > deadline:
            fetcher.__exit__()
            raise RuntimeError(f"no backfill:\n{fetcher.output}")
        time.sleep(1)
    return fetcher


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short steps at small scale")
    parser.add_argument(
        "--steps", default=",".join(STEPS), help=f"steps to run, in order ({', '.join(STEPS)})"
    )
    parser.add_argument("--streams", type=int, help="clients of streams10k (10,000; quick 500)")
    parser.add_argument("--stream-processes", type=int, help="load processes for the streams")
    parser.add_argument("--workers", type=int, help="STOCKSTREAMER_API_WORKERS (else the API's)")
    parser.add_argument(
        "--pin", action="store_true", help="load generators on the last core, the stack elsewhere"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.steps.split(",") if n.strip()]
    if not names or set(names) - set(STEPS):
        parser.error(f"--steps: choose among {', '.join(STEPS)}")
    steps = steps_for(names, args.quick, args.streams or (500 if args.quick else 10_000))
    check_platform(max(s.streams for s in steps))
    stack_cpus, load_cpus = split_cpus() if args.pin else (None, None)
    if stack_cpus:
        os.sched_setaffinity(0, stack_cpus)  # PostgreSQL, fetcher and API inherit it
    if any(s.rest_rate for s in steps):
        ensure_locust()
    # One API configuration per kind of step: the ramp's rows share one process.
    envs = {
        name: api_env(max(s.streams for s in steps if s.name == name), args.workers)
        for name in names
    }
    work = Path(tempfile.mkdtemp(prefix="stockstreamer-capacity-"))
    server = EmbeddedPostgres(work / "data", port=free_port())
    server.start()
    fetcher: ServiceProcess | None = None
    api: Api | None = None
    db: Db | None = None
    try:
        url = asyncio.run(server.create_database("capacity"))
        migrate(url)
        fetcher = start_fetcher(url)
        db = Db(url)
        print(f"database: {db.value(TICKS):,} ticks", flush=True)
        api = Api(url)
        postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        meter = Meter(api, postmaster, fetcher.pid)
        stack = Stack(db, api, meter, work, url, args.stream_processes, load_cpus, args.workers)
        pinning = (
            f"the stack on CPUs {sorted(stack_cpus)}, the load generators on {sorted(load_cpus)}"
            if stack_cpus and load_cpus
            else "nothing pinned: the load generators share the cores with the stack"
        )
        print(f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {pinning}.\n")
        results = []
        for step in steps:
            results.append(run_step(stack, step, *envs[step.name]))
            print("\n".join(results[-1].lines), flush=True)
        print("### Summary\n")
        print("\n".join(summary(results)))
    finally:
        if api is not None:
            api.stop()
        if db is not None:
            db.close()
        if fetcher is not None:
            fetcher.__exit__()
        server.destroy()
        shutil.rmtree(work, ignore_errors=True)  # locust's CSVs: the tables above say it all
    return 0


if __name__ == "__main__":
    sys.exit(main())
