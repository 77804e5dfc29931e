"""The dashboard document: run with `python -m services.dashboard` (or `bokeh serve`)."""

from __future__ import annotations

from bokeh.io import curdoc
from bokeh.server.contexts import BokehSessionContext

from services.dashboard.runtime import current_runtime
from services.dashboard.session import DashboardSession

runtime = current_runtime()
doc = curdoc()
context = doc.session_context
if isinstance(context, BokehSessionContext):
    # The viewer's address, as `app_hooks.process_request` put it in the session's signed token.
    viewer = context.token_payload.get("client")
    session = DashboardSession(doc, runtime, client=viewer if isinstance(viewer, str) else None)
    runtime.sessions[context.id] = session  # until `app_hooks.on_session_destroyed`
else:
    DashboardSession(doc, runtime)
