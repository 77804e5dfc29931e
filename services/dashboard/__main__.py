"""Run the dashboard: `python -m services.dashboard` (settings from env and `.env`)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from bokeh.application import Application
from bokeh.application.handlers.directory import DirectoryHandler
from bokeh.core.validation import silence
from bokeh.core.validation.warnings import MISSING_RENDERERS
from bokeh.server.server import Server
from tornado.ioloop import IOLoop

from services.common.config import load_settings
from services.common.logging import setup_logging
from services.dashboard.config import DashboardSettings
from services.dashboard.metrics import DashboardMetrics, HealthHandler, MetricsHandler, ReadyHandler
from services.dashboard.runtime import build_runtime, current_runtime, set_runtime

APP_DIR = Path(__file__).resolve().parent
log = logging.getLogger("services.dashboard")


def make_server(settings: DashboardSettings, metrics: DashboardMetrics) -> Server:
    """A Bokeh server for the app directory, plus /healthz, /readyz and /metrics."""
    runtime = build_runtime(settings, metrics)
    set_runtime(runtime)
    app = Application(DirectoryHandler(filename=str(APP_DIR)))
    extra = [
        (r"/healthz", HealthHandler),
        (r"/readyz", ReadyHandler, {"feed_status": lambda: str(runtime.feed.status)}),
        (r"/metrics", MetricsHandler, {"registry": metrics.registry}),
    ]
    return Server(
        {"/": app},
        io_loop=IOLoop.current(),
        address=settings.dashboard_host,
        port=settings.dashboard_port,
        allow_websocket_origin=settings.allowed_origins,
        extra_patterns=extra,
        num_procs=1,
    )


async def serve(settings: DashboardSettings) -> None:
    """Serve until SIGTERM or SIGINT, then close sessions and the API stream."""
    server = make_server(settings, DashboardMetrics())
    server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "dashboard listening",
        extra={"url": f"http://{settings.dashboard_host}:{server.port}/", "api": settings.api_url},
    )
    await stop.wait()
    log.info("dashboard stopping")
    server.stop(wait=False)
    await current_runtime().feed.stop()
    log.info("dashboard stopped")


def main() -> int:
    settings = load_settings(DashboardSettings, "dashboard")
    setup_logging(settings.log_level, settings.log_format)
    # Bokeh installs its own handler; route its records through ours, in our format.
    bokeh_log = logging.getLogger("bokeh")
    bokeh_log.handlers.clear()
    bokeh_log.propagate = True
    # Before the API has sent any stock the chart is legitimately empty.
    silence(MISSING_RENDERERS, True)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
