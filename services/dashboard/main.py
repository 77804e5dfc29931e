"""The dashboard document: run with `python -m services.dashboard` (or `bokeh serve`)."""

from __future__ import annotations

from bokeh.io import curdoc

from services.dashboard.runtime import current_runtime
from services.dashboard.session import DashboardSession, busy_page

runtime = current_runtime()
if runtime.feed.sessions < runtime.settings.dashboard_max_sessions:
    DashboardSession(curdoc(), runtime)
else:
    # Every session costs memory and a share of each tick's fan-out: past the cap, a page that
    # says so (and holds nothing) beats a process that slows down for everyone.
    runtime.metrics.sessions_refused.inc()
    busy_page(curdoc())
