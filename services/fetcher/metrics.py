"""Prometheus metrics of one fetcher."""

from __future__ import annotations

import math
import shutil
from functools import partial
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


class FetcherMetrics:
    """The fetcher's counters and gauges, registered in one registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        ns = "stockstreamer_fetcher"
        counter = partial(Counter, namespace=ns, registry=registry)
        gauge = partial(Gauge, namespace=ns, registry=registry)
        self.ticks_fetched = counter(
            "ticks_fetched", "Ticks received from the provider.", ["provider"]
        )
        self.ticks_written = counter(
            "ticks_written", "Raw ticks newly stored (duplicates excluded), by symbol.", ["symbol"]
        )
        self.ticks_as_bars = counter(
            "ticks_as_bars", "History older than the raw retention, stored as minute bars only."
        )
        self.ticks_dropped = counter("ticks_dropped", "Ticks dropped, by reason.", ["reason"])
        self.ticks_backfilled = counter(
            "ticks_backfilled", "Backfilled (history) ticks newly stored, raw or as minute bars."
        )
        self.newest_tick = gauge(
            "newest_tick_timestamp_seconds",
            "Provider time of the newest live tick, by symbol.",
            ["symbol"],
        )
        self.market_open = gauge(
            "market_open", "1 while the market is open by STOCKSTREAMER_CALENDAR (24/7: always)."
        )
        self.provider_requests = counter(
            "provider_requests", "Provider call attempts, failed or not, by call.", ["call"]
        )
        self.provider_errors = counter(
            "provider_errors", "Failed provider calls, by kind.", ["kind"]
        )
        self.provider_dropped = counter(
            "provider_dropped", "Vendor responses or items dropped as unusable, by kind.", ["kind"]
        )
        self.rounds_skipped = counter(
            "rounds_skipped", "Provider rounds skipped after exhausting retries.", ["call"]
        )
        self.stream_connected = gauge(
            "stream_connected", "1 while the provider's trade stream is connected."
        )
        self.batch_write_seconds = Histogram(
            "batch_write_seconds",
            "Time to write and commit one batch.",
            namespace=ns,
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.buffer_depth = gauge("buffer_depth", "Ticks waiting to be written.")
        self.buffer_capacity = gauge("buffer_capacity", "Ticks the outage buffer holds at most.")
        self.last_write = gauge(
            "last_write_timestamp_seconds", "Unix time of the last batch that stored something."
        )
        self.partitions_dropped = counter(
            "partitions_dropped", "Partitions dropped by retention (raw ticks and bars)."
        )
        self.database_up = gauge("database_up", "1 while the writer holds a working connection.")
        self.disk_free = gauge(
            "disk_free_bytes", "Free space on the disk of STOCKSTREAMER_FETCHER_DISK_PATH."
        )
        self.disk_total = gauge("disk_total_bytes", "Size of the database's disk.")
        # -- vendor minute bars: backfill and healing ---------------------------------------
        self.bars_fetched = counter(
            "bars_fetched",
            "Minute bars received from the history source, by provider.",
            ["provider"],
        )
        self.bars_stored = counter(
            "bars_stored", "Vendor minute bars newly stored (a minute already stored is final)."
        )
        self.bars_dropped = counter(
            "bars_dropped", "Vendor minute bars dropped, by reason.", ["reason"]
        )
        self.heal_passes = counter("heal_passes", "Healing passes, by outcome.", ["outcome"])
        self.heal_pass_seconds = Histogram(
            "heal_pass_seconds",
            "Time of one healing pass: finding gaps, asking the history source, storing.",
            namespace=ns,
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.heal_gaps = counter(
            "heal_gaps", "Gaps found by healing: runs of open-market minutes with nothing stored."
        )
        self.heal_minutes_filled = counter(
            "heal_minutes_filled", "Missing minutes healing filled from the history source."
        )
        self.heal_minutes_unavailable = counter(
            "heal_minutes_unavailable",
            "Missing minutes the history source had no bar for (not asked again).",
        )
        # The provider chain and market hours.
        self.active_source = gauge(
            "active_source", "1 for the provider serving live prices, 0 for others.", ["provider"]
        )
        self.failovers = counter(
            "failovers",
            "Switches of the serving provider, by the one left and the one taking over.",
            ["from", "to"],
        )
        self.provider_out = gauge(
            "provider_out",
            "1 for a provider taken out for good (its keys were refused).",
            ["provider"],
        )
        self.probes = counter(
            "probes",
            "Checks of a better provider while another serves, by outcome.",
            ["provider", "outcome"],
        )
        # The watchlist: which symbols are tracked, and how that changes while running.
        self.symbols_tracked = gauge(
            "symbols_tracked", "Symbols whose live prices the fetcher fetches now."
        )
        self.symbols_added = counter(
            "symbols_added",
            "Symbols that began to be tracked (validated, then backfilled), by origin.",
            ["origin"],
        )
        self.symbols_removed = counter(
            "symbols_removed", "Symbols no longer tracked (removed from the watchlist)."
        )
        self.symbols_rejected = counter(
            "symbols_rejected",
            "Symbols rejected: unknown to the vendor, or beyond a limit.",
            ["reason"],
        )
        self.watchlist_listener_up = gauge(
            "watchlist_listener_up", "1 while the LISTEN connection on the watchlist is open."
        )
        self.watchlist_reconnects = counter(
            "watchlist_reconnects", "Times the watchlist's LISTEN connection was re-established."
        )
        self.rounds_saved = counter(
            "rounds_saved", "Price rounds not spent on a vendor while the market was closed."
        )

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
