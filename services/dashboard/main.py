"""The dashboard document: run with `python -m services.dashboard` (or `bokeh serve`)."""

from __future__ import annotations

from bokeh.io import curdoc

from services.dashboard.runtime import current_runtime
from services.dashboard.session import DashboardSession

DashboardSession(curdoc(), current_runtime())
