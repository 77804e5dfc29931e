"""Run the dashboard: `python -m services.dashboard` (settings from env and `.env`)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

from bokeh.application import Application
from bokeh.application.handlers.directory import DirectoryHandler
from bokeh.server.server import BaseServer
from bokeh.server.tornado import BokehTornado
from bokeh.server.util import bind_sockets, create_hosts_allowlist
from bokeh.settings import settings as bokeh_settings
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from services.common.config import load_settings
from services.common.logging import setup_logging
from services.dashboard import collect
from services.dashboard.config import DashboardSettings
from services.dashboard.export import ExportHandler
from services.dashboard.gate import PageGate, PageHandler
from services.dashboard.metrics import DashboardMetrics, HealthHandler, MetricsHandler, ReadyHandler
from services.dashboard.runtime import build_runtime, current_runtime, set_runtime

APP_DIR = Path(__file__).resolve().parent
log = logging.getLogger("services.dashboard")

# What a browser sends over the WebSocket is small: widget values, range changes, a document
# request. Tornado's default allows 10 MiB a message (Bokeh's, 20 MiB).
WS_MAX_MESSAGE = 64 * 1024
HTTP_MAX_BODY = 64 * 1024  # the page takes no request bodies; Tornado reads up to 100 MB of one
IDLE_CONNECTION_SECONDS = 60  # an idle keep-alive connection (Tornado's default: an hour)


class DashboardServer(BaseServer):
    """The Bokeh server of the app, its page behind the gate, with /healthz, /readyz, /metrics."""

    def __init__(self, settings: DashboardSettings, metrics: DashboardMetrics) -> None:
        runtime = build_runtime(settings, metrics)
        set_runtime(runtime)
        sockets, self.bound_port = bind_sockets(settings.dashboard_host, settings.dashboard_port)
        unused_ms = int(settings.dashboard_unused_session_seconds * 1000)
        extra: list[Any] = [
            (r"/healthz", HealthHandler),
            (r"/readyz", ReadyHandler, {"feed_status": lambda: str(runtime.feed.status)}),
            (r"/metrics", MetricsHandler, {"registry": metrics.registry}),
            (r"/export\.csv", ExportHandler, {"runtime": runtime}),
        ]
        app = BokehTornado(
            {"/": Application(DirectoryHandler(filename=str(APP_DIR)))},
            extra_patterns=extra,
            extra_websocket_origins=create_hosts_allowlist(
                settings.allowed_origins, self.bound_port
            ),
            # Signed session ids and tokens: a WebSocket can only open a session a page load
            # (past the gate) handed out, never make up its own.
            sign_sessions=True,
            secret_key=secrets.token_bytes(32),
            unused_session_lifetime_milliseconds=unused_ms,
            check_unused_sessions_milliseconds=max(500, min(unused_ms // 4, 5000)),
            websocket_max_message_size_bytes=WS_MAX_MESSAGE,
        )
        context = app.applications["/"]

        def connected() -> int:
            return sum(1 for session in context.sessions if session.connection_count > 0)

        metrics.connected_sessions.set_function(connected)
        metrics.unused_sessions.set_function(lambda: len(list(context.sessions)) - connected())
        self.gate = PageGate(runtime, connected)
        # Tornado tries the rules added here before the application's own, so this `/` is
        # answered by the gate rather than by Bokeh's page handler.
        page = {"application_context": context, "bokeh_websocket_path": "/ws", "gate": self.gate}
        app.add_handlers(r".*", [(r"/?", PageHandler, page)])
        http = HTTPServer(
            app,
            max_body_size=HTTP_MAX_BODY,
            idle_connection_timeout=IDLE_CONNECTION_SECONDS,
        )
        http.add_sockets(sockets)
        super().__init__(IOLoop.current(), app, http)


async def serve(settings: DashboardSettings) -> None:
    """Serve until SIGTERM or SIGINT, then close sessions and the API stream."""
    server = DashboardServer(settings, DashboardMetrics())
    server.start()
    collect.install()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "dashboard listening",
        extra={
            "url": f"http://{settings.dashboard_host}:{server.bound_port}/",
            "api": settings.api_url,
        },
    )
    await stop.wait()
    log.info("dashboard stopping")
    server.stop(wait=False)
    await current_runtime().stop()
    log.info("dashboard stopped")


def main() -> int:
    settings = load_settings(DashboardSettings, "dashboard")
    setup_logging(settings.log_level, settings.log_format)
    # Bokeh installs its own handler; route its records through ours, in our format.
    bokeh_log = logging.getLogger("bokeh")
    bokeh_log.handlers.clear()
    bokeh_log.propagate = True
    # Bokeh checks every new document's models for mistakes (a quarter of a page build): the
    # tests do that once for the document every page gets, the server need not on every load.
    bokeh_settings.perform_document_validation.set_value(False)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
