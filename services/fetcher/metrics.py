"""Prometheus metrics of one fetcher."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


class FetcherMetrics:
    """The fetcher's counters and gauges, registered in one registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        ns = "stockstreamer_fetcher"
        self.registry = registry
        self.ticks_fetched = Counter(
            "ticks_fetched", "Ticks received from the provider.", ["provider"],
            namespace=ns, registry=registry,
        )  # fmt: skip
        self.ticks_written = Counter(
            "ticks_written", "Raw ticks newly stored (duplicates excluded).",
            namespace=ns, registry=registry,
        )  # fmt: skip
        self.ticks_as_bars = Counter(
            "ticks_as_bars", "History older than the raw retention, stored as minute bars only.",
            namespace=ns, registry=registry,
        )  # fmt: skip
        self.ticks_dropped = Counter(
            "ticks_dropped", "Ticks dropped, by reason.", ["reason"],
            namespace=ns, registry=registry,
        )  # fmt: skip
        self.provider_errors = Counter(
            "provider_errors", "Failed provider calls, by kind.", ["kind"],
            namespace=ns, registry=registry,
        )  # fmt: skip
        self.provider_dropped = Counter(
            "provider_dropped", "Vendor responses or items dropped as unusable, by kind.",
            ["kind"], namespace=ns, registry=registry,
        )  # fmt: skip
        self.ticks_backfilled = Counter(
            "ticks_backfilled", "Backfilled (history) ticks newly stored, raw or as minute bars.",
            namespace=ns, registry=registry,
        )  # fmt: skip
        self.stream_connected = Gauge(
            "stream_connected", "1 while the provider's trade stream is connected.",
            namespace=ns, registry=registry,
        )  # fmt: skip
        self.rounds_skipped = Counter(
            "rounds_skipped", "Provider rounds skipped after exhausting retries.", ["call"],
            namespace=ns, registry=registry,
        )  # fmt: skip
        self.batch_write_seconds = Histogram(
            "batch_write_seconds", "Time to write and commit one batch.",
            namespace=ns, registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )  # fmt: skip
        self.buffer_depth = Gauge(
            "buffer_depth", "Ticks waiting to be written.", namespace=ns, registry=registry
        )
        self.last_write = Gauge(
            "last_write_timestamp_seconds", "Unix time of the last committed batch.",
            namespace=ns, registry=registry,
        )  # fmt: skip
        self.partitions_dropped = Counter(
            "partitions_dropped", "Partitions dropped by retention (raw ticks and bars).",
            namespace=ns, registry=registry,
        )  # fmt: skip
        self.database_up = Gauge(
            "database_up", "1 while the writer holds a working connection.",
            namespace=ns, registry=registry,
        )  # fmt: skip
