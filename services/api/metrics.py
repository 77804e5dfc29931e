"""Prometheus metrics of one API process, and the middleware that times requests."""

from __future__ import annotations

import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Seconds between a tick's commit and its delivery: tens of milliseconds when all is well.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})


class ApiMetrics:
    """The API's metrics, in a registry of their own (one per app, so tests can run several)."""

    def __init__(self) -> None:
        ns = "stockstreamer_api"
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self.request_seconds = Histogram(
            "request_seconds",
            "Time to the response's headers, by route and status.",
            ["method", "route", "status"],
            namespace=ns,
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.open_streams = Gauge(
            "open_streams", "Event streams open now.", namespace=ns, registry=registry
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
            "listener_up", "1 while the LISTEN connection is open.", namespace=ns, registry=registry
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
