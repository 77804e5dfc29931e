"""Prometheus metrics of the dashboard, and its /metrics, /healthz and /readyz handlers."""

from __future__ import annotations

import json
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from tornado.web import RequestHandler


class DashboardMetrics:
    """The dashboard's counters and gauges, registered in one registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        ns = "stockstreamer_dashboard"
        self.registry = registry
        self.sessions = Gauge(
            "sessions",
            "Browser sessions showing live data (their page connected and drawn).",
            namespace=ns,
            registry=registry,
        )
        self.connected_sessions = Gauge(
            "connected_sessions",
            "Sessions with an open WebSocket (what the session cap counts).",
            namespace=ns,
            registry=registry,
        )
        self.unused_sessions = Gauge(
            "unused_sessions",
            "Sessions without an open WebSocket (a page that never connected, a closed tab), "
            "kept until they expire.",
            namespace=ns,
            registry=registry,
        )
        self.pages_refused = Counter(
            "pages_refused",
            "Page loads answered with the busy notice instead of a dashboard, by reason: "
            "rate_limited (the client's page rate, 429), busy (page builds queued, 503), "
            "sessions (connected sessions at the cap, 503).",
            ["reason"],
            namespace=ns,
            registry=registry,
        )
        self.page_build_seconds = Histogram(
            "page_build_seconds",
            "Time one page load spent building its document (CPU-bound, on the event loop).",
            namespace=ns,
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5),
        )
        self.feed_live = Gauge(
            "feed_live", "1 while the API stream is connected.", namespace=ns, registry=registry
        )
        self.feed_events = Counter(
            "feed_events",
            "Stream events received, by type.",
            ["event"],
            namespace=ns,
            registry=registry,
        )
        self.feed_reconnects = Counter(
            "feed_reconnects", "Stream reconnect attempts.", namespace=ns, registry=registry
        )
        self.ticks_delivered = Counter(
            "ticks_delivered",
            "Live ticks handed to sessions (summed over sessions).",
            namespace=ns,
            registry=registry,
        )
        self.api_requests = Counter(
            "api_requests",
            "REST calls to the API, by endpoint and outcome.",
            ["endpoint", "outcome"],
            namespace=ns,
            registry=registry,
        )
        self.api_seconds = Histogram(
            "api_request_seconds",
            "Duration of successful REST calls to the API.",
            ["endpoint"],
            namespace=ns,
            registry=registry,
        )
        self.receipt_to_push = Histogram(
            "receipt_to_push_seconds",
            "Per price event and session: from the event's arrival on the API stream to its "
            "push into the session's chart.",
            namespace=ns,
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )


class MetricsHandler(RequestHandler):
    """GET /metrics in the Prometheus text format."""

    def initialize(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(generate_latest(self.registry))


class HealthHandler(RequestHandler):
    """GET /healthz: the process serves requests."""

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"status": "ok"}))


class ReadyHandler(RequestHandler):
    """GET /readyz: pages can be served; the body says whether the API stream is live."""

    def initialize(self, feed_status: Callable[[], str]) -> None:
        self.feed_status = feed_status

    def get(self) -> None:
        # Ready even while the API is down: the page then tells people so, which beats no page.
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"status": "ready", "feed": self.feed_status()}))
