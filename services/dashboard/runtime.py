"""The per-process objects every session shares: settings, API client, metrics and the feed."""

from __future__ import annotations

from dataclasses import dataclass

from services.dashboard.client import ApiClient
from services.dashboard.config import DashboardSettings
from services.dashboard.feed import Feed
from services.dashboard.metrics import DashboardMetrics


@dataclass(frozen=True, slots=True)
class Runtime:
    """What one dashboard process holds once, however many browser tabs are open."""

    settings: DashboardSettings
    metrics: DashboardMetrics
    client: ApiClient
    feed: Feed


_current: Runtime | None = None


def build_runtime(settings: DashboardSettings, metrics: DashboardMetrics) -> Runtime:
    """Wire a client and a feed for `settings`; nothing connects until the feed starts."""
    client = ApiClient(settings.api_url, settings.dashboard_api_timeout, metrics)
    return Runtime(
        settings, metrics, client, Feed(client, metrics, settings.dashboard_reconnect_max)
    )


def set_runtime(runtime: Runtime | None) -> None:
    """Make `runtime` the process's one runtime."""
    global _current
    _current = runtime


def current_runtime() -> Runtime:
    """The process's runtime, built from the environment the first time it is asked for."""
    global _current
    if _current is None:
        _current = build_runtime(DashboardSettings(), DashboardMetrics())
    return _current
