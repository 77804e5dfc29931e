"""Schemathesis hooks: the rules that tie query parameters together, which a schema cannot state.

The OpenAPI document declares what each parameter accepts on its own. Two rules involve several
parameters (docs/api.md states them): the window from `start` to `end` (by default the week up
to now) runs forwards and spans at most ten years (400 days for the market's sessions), and a
named bar `interval` must fit `max_bars` over it. A schema-valid case that breaks one is moved
inside it — `start` dropped, so the window is the default week before `end`; `interval` made
`auto` — and sent; every other case is sent as generated. Loaded through SCHEMATHESIS_HOOKS by
tests/api/test_openapi.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import schemathesis
from fastapi import HTTPException
from schemathesis import Case, HookContext

from services.api.deps import parse_time
from services.api.routes.market import MAX_SESSIONS_WINDOW
from services.api.routes.prices import DEFAULT_WINDOW, MAX_WINDOW
from services.common.bars import BY_NAME

DEFAULT_MAX_BARS = 500  # /api/v1/bars without max_bars
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
