"""Prometheus metrics of one fetcher."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

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
            "ticks_written", "Raw ticks newly stored (duplicates excluded), by symbol.",
            ["symbol"], namespace=ns, registry=registry,
        )  # fmt: skip
        self.newest_tick = Gauge(
            "newest_tick_timestamp_seconds", "Provider time of the newest live tick, by symbol.",
            ["symbol"], namespace=ns, registry=registry,
        )  # fmt: skip
        self.market_open = Gauge(
            "market_open", "1 while the provider says the market is open (the simulator: always).",
            namespace=ns, registry=registry,
        )  # fmt: skip
        self.provider_requests = Counter(
            "provider_requests", "Provider call attempts, failed or not, by call.", ["call"],
            namespace=ns, registry=registry,
        )  # fmt: skip
        self.buffer_capacity = Gauge(
            "buffer_capacity", "Ticks the outage buffer holds at most.",
            namespace=ns, registry=registry,
        )  # fmt: skip
        self.disk_free = Gauge(
            "disk_free_bytes", "Free space on the disk of STOCKSTREAMER_FETCHER_DISK_PATH.",
            namespace=ns, registry=registry,
        )  # fmt: skip
        self.disk_total = Gauge(
            "disk_total_bytes", "Size of the database's disk.", namespace=ns, registry=registry
        )
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

    def watch_disk(self, path: Path) -> None:
        """Report the disk holding `path`, read at each scrape (NaN while it cannot be read)."""

        def usage(field: str) -> float:
            try:
                return float(getattr(shutil.disk_usage(path), field))
            except OSError:
                return math.nan

        self.disk_free.set_function(lambda: usage("free"))
        self.disk_total.set_function(lambda: usage("total"))

    def total(self, name: str, **labels: str) -> float:
        """A metric's value summed over every label set that matches `labels`."""
        total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                wanted = sample.name == f"stockstreamer_fetcher_{name}"
                if wanted and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total
