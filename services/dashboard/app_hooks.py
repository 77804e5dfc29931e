"""Server lifecycle hooks: the process's API stream consumer, and who each page is for."""

from __future__ import annotations

import logging
from typing import Any

from bokeh.server.contexts import BokehServerContext, BokehSessionContext
from tornado.httputil import HTTPServerRequest

from services.dashboard.runtime import current_runtime

log = logging.getLogger("services.dashboard")


def on_server_loaded(server_context: BokehServerContext) -> None:
    """Runs once per process, on the server's event loop: start the feed."""
    runtime = current_runtime()
    runtime.start()
    log.info("stream consumer started", extra={"api": runtime.settings.api_url})


def process_request(request: HTTPServerRequest) -> dict[str, Any]:
    """A new page's viewer, kept in its session's signed token (`main.py` reads it)."""
    return {"client": current_runtime().viewer(request)}


def on_session_destroyed(session_context: BokehSessionContext) -> None:
    """A session expired (its tab closed, or its page never connected): stop what it started.

    Here rather than in a hook on the document, which Bokeh follows with a full garbage
    collection per session (one more on top of the one its document's destruction runs).
    """
    session = current_runtime().sessions.pop(session_context.id, None)
    if session is not None:
        session.close()
    log.debug("session closed", extra={"session": session_context.id})
