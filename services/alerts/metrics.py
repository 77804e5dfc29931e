"""Prometheus metrics of the alerts service."""

from __future__ import annotations

from functools import partial

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

NAMESPACE = "stockstreamer_alerts"


class AlertsMetrics:
    """The alerts service's counters, gauges and histograms, registered in one registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        counter = partial(Counter, namespace=NAMESPACE, registry=registry)
        gauge = partial(Gauge, namespace=NAMESPACE, registry=registry)
        histogram = partial(Histogram, namespace=NAMESPACE, registry=registry)
        self.active = gauge("active", "Alerts in force (not deleted).")
        self.armed = gauge("armed", "Alerts armed: they fire at the next tick past their line.")
        self.firings = counter("firings", "Alerts fired.")
        self.rearmed = counter("rearmed", "Fired alerts armed again (the price came back).")
        self.deliveries = counter(
            "deliveries",
            "Delivery attempts by channel and result (delivered, failed, abandoned).",
            ["channel", "result"],
        )
        self.tick_to_delivery = histogram(
            "tick_to_delivery_seconds",
            "From a firing tick's time to its delivery, by channel.",
            ["channel"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.evaluation = histogram(
            "evaluation_seconds",
            "Evaluation time per tick (each batch's time divided by its ticks).",
            buckets=(1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 1e-3),
        )
        self.ticks = counter("ticks", "Live ticks evaluated.")
        self.cursor = gauge("cursor_event_id", "The last tick event id evaluated (resume point).")
        self.database_up = gauge("database_up", "1 while the service holds its connection.")
        self.deliveries_in_flight = gauge(
            "deliveries_in_flight", "Deliveries started and not yet delivered or given up on."
        )

    def total(self, name: str, **labels: str) -> float:
        """A metric's value summed over every label set that matches `labels`."""
        total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                wanted = sample.name == f"{NAMESPACE}_{name}"
                if wanted and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total
