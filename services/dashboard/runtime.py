"""The per-process objects every session shares: settings, API client, metrics and the feed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tornado.httputil import HTTPServerRequest

from services.common.clients import TrustedProxies
from services.dashboard.client import ApiClient
from services.dashboard.config import DashboardSettings
from services.dashboard.feed import Feed
from services.dashboard.metrics import DashboardMetrics

if TYPE_CHECKING:
    from services.dashboard.session import DashboardSession


@dataclass(frozen=True, slots=True)
class Runtime:
    """What one dashboard process holds once, however many browser tabs are open."""

    settings: DashboardSettings
    metrics: DashboardMetrics
    client: ApiClient
    feed: Feed
    proxies: TrustedProxies
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    sessions: dict[str, DashboardSession] = field(default_factory=dict)  # by Bokeh session id

    def start(self) -> None:
        """Start the feed, and the lookups of trusted proxies given by name, on the running loop."""
        self.feed.start()
        if self.proxies.names and not self.tasks:
            resolving = self.proxies.keep_resolving()
            self.tasks.append(asyncio.get_running_loop().create_task(resolving, name="proxies"))

    async def stop(self) -> None:
        """Stop the background work and close the API connections."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.feed.stop()

    def viewer(self, request: HTTPServerRequest) -> str:
        """The address a page request comes from (X-Forwarded-For only from a trusted proxy)."""
        return self.proxies.client(request.remote_ip, request.headers.get("X-Forwarded-For"))


_current: Runtime | None = None


def build_runtime(settings: DashboardSettings, metrics: DashboardMetrics) -> Runtime:
    """Wire a client and a feed for `settings`; nothing connects until the feed starts."""
    client = ApiClient(settings.api_url, settings.dashboard_api_timeout, metrics)
    feed = Feed(client, metrics, settings.dashboard_reconnect_max)
    return Runtime(settings, metrics, client, feed, TrustedProxies(settings.trusted_proxies))


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
