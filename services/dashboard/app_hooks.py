"""Server lifecycle hooks: start the process's one API stream consumer when the server loads."""

from __future__ import annotations

import logging

from bokeh.server.contexts import BokehServerContext, BokehSessionContext

from services.dashboard.runtime import current_runtime

log = logging.getLogger("services.dashboard")


def on_server_loaded(server_context: BokehServerContext) -> None:
    """Runs once per process, on the server's event loop: start the feed."""
    runtime = current_runtime()
    runtime.feed.start()
    log.info("stream consumer started", extra={"api": runtime.settings.api_url})


def on_session_destroyed(session_context: BokehSessionContext) -> None:
    """A tab closed: its document's own hook unsubscribes it from the feed."""
    log.debug("session closed", extra={"session": session_context.id})
