"""Schemathesis hooks: the rules that tie query parameters together, which a schema cannot state.

The OpenAPI document declares what each parameter accepts on its own. Two rules involve several
parameters (docs/api.md states them): the window from `start` to `end` (by default the week up
to now) runs forwards and spans at most ten years (400 days for the market's sessions), and a
named bar `interval` must fit `max_bars` over it. A schema-valid case that breaks one is moved
inside it — `start` dropped, so the window is the default week before `end`; `interval` made
`auto` — and sent; every other case is sent as generated. Likewise a new alert's body: a price
line (above, below) is more than 0, and its channels are those the alerts service was given
(here none: only `browser`). Loaded through SCHEMATHESIS_HOOKS by tests/api/test_openapi.py.
"""

from __future__ import annotations

import ast
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis
from fastapi import HTTPException
from schemathesis import Case, HookContext

from services.api.deps import parse_time
from services.api.routes.market import MAX_SESSIONS_WINDOW
from services.api.routes.prices import DEFAULT_WINDOW, MAX_WINDOW
from services.common.bars import BY_NAME

DEFAULT_MAX_BARS = 500  # /api/v1/bars without max_bars

# CPython 3.11's ast.parse is not safe from several threads at once ("SystemError: AST
# constructor recursion depth mismatch"), and hypothesis parses sources to describe the filters
# schemathesis' workers build: one parse at a time.
_PARSE_LOCK = threading.Lock()
_parse = ast.parse


def _one_parse_at_a_time(*args: Any, **kwargs: Any) -> Any:
    with _PARSE_LOCK:
        return _parse(*args, **kwargs)


ast.parse = _one_parse_at_a_time
# A window that ends now is measured by the API a moment after it is measured here.
CLOCK_MARGIN = timedelta(minutes=1)


def _instant(name: str, value: object) -> datetime | None:
    """The time the API reads from `value`; None when it reads none (the API must say why)."""
    try:
        return parse_time(name, str(value))
    except HTTPException:
        return None


def _window(query: dict[str, object]) -> tuple[datetime, datetime, datetime] | None:
    """The window as the API will see it: (earliest start, start, latest end); None if unread."""
    end = query.get("end")
    if end is None:
        until = datetime.now(UTC)
        latest = until + CLOCK_MARGIN
    else:
        parsed = _instant("end", end)
        if parsed is None:
            return None
        until = latest = parsed
    start = query.get("start")
    since = until - DEFAULT_WINDOW if start is None else _instant("start", start)
    return None if since is None else (since, until, latest)


@schemathesis.hook
def map_case(context: HookContext, case: Case) -> Case:
    meta, query = case.meta, case.query
    if case.operation.path == "/api/v1/alerts" and case.operation.method.upper() == "POST":
        # the schema's own examples come without meta
        return case if meta and not meta.generation.mode.is_positive else _new_alert(case)
    if meta is None or not meta.generation.mode.is_positive or not query:
        return case
    window = _window(query)
    if window is None:
        return case
    since, until, latest = window
    sessions = case.operation.path == "/api/v1/market/sessions"
    longest = MAX_SESSIONS_WINDOW if sessions else MAX_WINDOW
    if query.get("start") is not None and not (since < until and latest - since <= longest):
        del query["start"]
        since = until - DEFAULT_WINDOW
    interval = query.get("interval")
    if case.operation.path == "/api/v1/bars" and interval in BY_NAME:
        bars = (latest - since) // timedelta(seconds=BY_NAME[str(interval)].seconds) + 1
        if bars > int(query.get("max_bars", DEFAULT_MAX_BARS)):
            query["interval"] = "auto"
    return case


def _new_alert(case: Case) -> Case:
    body = case.body
    if isinstance(body, dict):
        value = body.get("value")
        if body.get("condition") in ("above", "below") and isinstance(value, int | float):
            if value <= 0:
                body["value"] = abs(value) or 1
        if isinstance(body.get("channels"), list):
            body["channels"] = ["browser"]
    return case
