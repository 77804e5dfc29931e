"""The market's state and sessions, by the exchange calendar of the fetcher's feed."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter

from services.api.auth import READERS
from services.api.deps import FeedDep, WatchDep, epoch_ms
from services.api.routes.prices import time_query, window
from services.common.contract import Market, Problem, Sessions

router = APIRouter(
    prefix="/api/v1/market",
    tags=["market"],
    dependencies=READERS,
    responses={
        429: {"model": Problem, "description": "Too many requests at once from this client"},
        503: {"model": Problem, "description": "Database unavailable"},
    },
)

MAX_SESSIONS_WINDOW = timedelta(days=400)
SessionsStart = Annotated[
    str | None,
    time_query("end - 7 days. It must be before end, and at most 400 days before it."),
]
SessionsEnd = Annotated[str | None, time_query("now.")]


@router.get("", response_model=Market)
async def get_market(feed: FeedDep, watch: WatchDep) -> Market:
    """Whether the market is open now, and when it next opens and closes."""
    return await watch.market(feed)


@router.get(
    "/sessions",
    response_model=Sessions,
    responses={422: {"model": Problem, "description": "Invalid parameter"}},
)
async def get_sessions(
    feed: FeedDep, watch: WatchDep, start: SessionsStart = None, end: SessionsEnd = None
) -> Sessions:
    """The market's open intervals in [start, end), clipped to it, oldest first."""
    since, until = window(start, end, MAX_SESSIONS_WINDOW, "400 days")
    market, spans = await watch.sessions(feed, since, until)
    return Sessions(
        start=epoch_ms(since),
        end=epoch_ms(until),
        calendar=market.name,
        timezone=str(market.tz),
        sessions=[(epoch_ms(a), epoch_ms(b)) for a, b in spans],
    )
