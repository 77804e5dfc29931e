"""Prometheus metrics of the API, and the middleware that times requests.

One process keeps its metrics in a registry of its own. Several worker processes (api_workers)
keep theirs in prometheus_client's multiprocess files, in the directory PROMETHEUS_MULTIPROC_DIR
that the supervisor sets before prometheus_client is first imported (it picks how values are
kept at import): a scrape of any worker reads every worker's files, so counters and histograms
add up over the workers, and the gauges say how they are combined (`multiprocess_mode`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Seconds between a tick's commit and its delivery: tens of milliseconds when all is well.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})
NAMESPACE = "stockstreamer_api"
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


def worker_restarts(registry: CollectorRegistry | None) -> Counter:
    """Worker processes started again after one died (the supervisor counts them)."""
    return Counter(
        "worker_restarts",
        "API worker processes started again after one died unexpectedly.",
        namespace=NAMESPACE,
        registry=registry,
    )


class _Families:
    """Metric families already collected, as generate_latest takes them."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


class ApiMetrics:
    """The API's metrics: in a registry of their own (one per app, so tests can run several), or
    with `multiprocess`, in the files every worker process's scrape adds up."""

    def __init__(self, multiprocess: bool = False, worker: int = 0) -> None:
        ns = NAMESPACE
        self.multiprocess = multiprocess
        self.worker = str(worker)
        self.registry = registry = CollectorRegistry()
        if not multiprocess:
            # process_* describe the one process that answers; with workers, see worker_* below
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        self.workers = Gauge(
            "workers",
            "API worker processes serving now.",
            namespace=ns,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.worker_restarts = worker_restarts(registry)
        # Each worker's own process (ProcessCollector sees only the process that is scraped).
        self.worker_cpu = Counter(
            "worker_cpu_seconds",
            "CPU time (user and system) of each API worker process, by worker index; a worker "
            "started again continues its index's count. Sampled every few seconds.",
            ["worker"],
            namespace=ns,
            registry=registry,
        )
        self.worker_memory = Gauge(
            "worker_resident_memory_bytes",
            "Resident memory of each API worker process, by worker index (pages shared between "
            "the workers count in each). Sampled every few seconds.",
            ["worker"],
            namespace=ns,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.worker_open_fds = Gauge(
            "worker_open_fds",
            "Open files (sockets included) of each API worker process, by worker index. "
            "Sampled every few seconds.",
            ["worker"],
            namespace=ns,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._cpu_seen = 0.0
        self.request_seconds = Histogram(
            "request_seconds",
            "Time to the response's headers, by route and status.",
            ["method", "route", "status"],
            namespace=ns,
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.open_streams = Gauge(
            "open_streams",
            "Event streams open now.",
            namespace=ns,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.events_sent = Counter(
            "events_sent",
            "Events handed to stream clients, by type (counted once per fan-out: each event "
            "times the streams it went to).",
            ["event"],
            namespace=ns,
            registry=registry,
        )
        self.slow_disconnects = Counter(
            "slow_client_disconnects",
            "Streams cut because the client fell too far behind.",
            namespace=ns,
            registry=registry,
        )
        self.notifications = Counter(
            "notifications",
            "PostgreSQL notifications received, by channel.",
            ["channel"],
            namespace=ns,
            registry=registry,
        )
        self.listener_up = Gauge(
            "listener_up",
            "API processes whose LISTEN connection is open (1 per process; compare with "
            "stockstreamer_api_workers).",
            namespace=ns,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.listener_reconnects = Counter(
            "listener_reconnects",
            "Times the LISTEN connection was re-established.",
            namespace=ns,
            registry=registry,
        )
        self.history_seconds = Histogram(
            "history_query_seconds",
            "Time to read one history window (prices or bars).",
            ["route"],
            namespace=ns,
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.auth_failures = Counter(
            "auth_failures",
            "Requests refused for their token (writes; reads too when a token is required): "
            "missing, wrong, or throttled (too many).",
            ["reason"],
            namespace=ns,
            registry=registry,
        )
        self.watchlist_changes = Counter(
            "watchlist_changes",
            "Watchlist changes made through the API: added, retried (a rejected symbol added "
            "again), removed.",
            ["change"],
            namespace=ns,
            registry=registry,
        )
        self.alert_changes = Counter(
            "alert_changes",
            "Alerts created and deleted through the API.",
            ["change"],
            namespace=ns,
            registry=registry,
        )
        self.export_rows = Counter(
            "export_rows",
            "Rows written to CSV exports (prices.csv and bars.csv).",
            namespace=ns,
            registry=registry,
        )
        self.streams_refused = Counter(
            "streams_refused",
            "Event streams refused (503) because the process had its maximum.",
            namespace=ns,
            registry=registry,
        )
        self.history_refused = Counter(
            "history_refused",
            "History requests refused (503) because all slots were busy.",
            namespace=ns,
            registry=registry,
        )
        self.history_in_flight = Gauge(
            "history_in_flight",
            "History reads (prices, bars, stream replays) holding a slot now.",
            namespace=ns,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.client_refused = Counter(
            "client_limit_refused",
            "Requests refused (429) because their client address was over one of its limits, "
            "by limit (streams, history_rate, history_concurrency, connections).",
            ["limit"],
            namespace=ns,
            registry=registry,
        )
        self.abandoned = Counter(
            "abandoned_requests",
            "Requests whose client went away before the answer; their work was cancelled.",
            ["route"],
            namespace=ns,
            registry=registry,
        )
        self.notifications_dropped = Counter(
            "notifications_dropped",
            "PostgreSQL notifications ignored as malformed or not about tracked symbols, "
            "by channel and reason.",
            ["channel", "reason"],
            namespace=ns,
            registry=registry,
        )
        self.stream_lag = Histogram(
            "stream_fetch_seconds",
            "Time to fetch and fan out the ticks of one notification (the writes to streams "
            "with room in their sockets included).",
            namespace=ns,
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )
        self.commit_to_send = Histogram(
            "commit_to_send_seconds",
            "Per stream and batch of price events: from the LISTEN connection's receipt of the "
            "`prices` notification (delivered on commit, so a proxy for the commit time) to the "
            "batch's bytes being handed to the stream's socket by the fan-out. Sampled: every "
            "stream of a fan-out to fewer than 200, else one in len/100, spread evenly over the "
            "fan-out's order; a stream whose socket is full (its client's lag) is not counted.",
            namespace=ns,
            registry=registry,
            buckets=LAG_BUCKETS,
        )

    def exposition(self) -> bytes:
        """The text a scrape gets: this process's metrics, or with workers, all of theirs."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        PlatformCollector(registry=registry)
        families = list(registry.collect())
        # A labelled metric no worker has used yet has no file entry: name it anyway, as one
        # process's registry does, so that queries and dashboards find every series they expect.
        found = {family.name for family in families}
        families += [
            Metric(family.name, family.documentation, family.type)
            for family in self.registry.collect()
            if family.name not in found
        ]
        return generate_latest(_Families(families))

    def sample_process(self) -> None:
        """This worker's CPU time, memory and open files, into its worker_* series (Linux)."""
        proc = Path("/proc/self")
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            pages = int((proc / "statm").read_text().split()[1])
            fds = len(os.listdir(proc / "fd"))
        except (OSError, IndexError, ValueError):
            return  # no procfs here: the series stay at what they were
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        self.worker_cpu.labels(self.worker).inc(max(0.0, cpu - self._cpu_seen))
        self._cpu_seen = cpu
        self.worker_memory.labels(self.worker).set(pages * os.sysconf("SC_PAGE_SIZE"))
        self.worker_open_fds.labels(self.worker).set(fds)


class TimingMiddleware:
    """Observes each HTTP request's time to headers under its route template, not its raw path."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                # Unmatched paths share one label, so random URLs cannot grow the label set.
                template = getattr(route, "path", None) or "unmatched"
                method = scope["method"] if scope["method"] in _METHODS else "other"
                self.metrics.request_seconds.labels(
                    method, template, str(message["status"])
                ).observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, timed_send)
