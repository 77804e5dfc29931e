"""The door to the dashboard's page: which page loads get a document built, and what the rest get.

A page load runs the app's `main.py`, building a document of a few hundred models on the event
loop: that is what a bare `GET /` costs, whether or not a browser ever connects. Before any of
it, three checks, in this order:

- the client's address (X-Forwarded-For only from a trusted proxy) has a token bucket of page
  loads: beyond it, 429;
- connected sessions at the cap: 503;
- one page is built at a time, the event loop free between two (so requests that arrive during
  a build are read, counted and answered), and at most `max_pending` loads are built or waiting:
  beyond, 503 at once instead of a place in a line that grows without bound.

A refused load gets a few hundred bytes of static HTML with Retry-After (and a refresh after that
long, so a browser comes back by itself): no Bokeh session, no document.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bokeh.server.views.doc_handler import DocHandler

from services.common.clients import RateLimiter, client_key
from services.dashboard.runtime import Runtime

log = logging.getLogger(__name__)

BUSY_RETRY = 3  # seconds: the pages queued ahead are built in about that long
FULL_RETRY = 30  # seconds: a place frees when a viewer leaves

NOTICE_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{retry}">
<title>stockstreamer · busy</title></head>
<body style="font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em">
<h2>stockstreamer</h2>
<p data-status="{reason}">{text}</p>
<p>This page tries again by itself in {retry} s.</p>
</body></html>
"""
NOTICE_TEXT = {
    "rate_limited": "Too many page loads from your address just now.",
    "busy": "The dashboard is opening many pages right now.",
    "sessions": "This dashboard is serving as many viewers as it can right now.",
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a page load gets the notice instead of the dashboard, and when to come back."""

    status: int
    reason: str
    retry: int

    def page(self) -> str:
        return NOTICE_PAGE.format(
            retry=self.retry, reason=self.reason, text=html.escape(NOTICE_TEXT[self.reason])
        )


class PageGate:
    """Admits page loads, and hands out turns to build them, one at a time, first come first."""

    def __init__(self, runtime: Runtime, connected: Callable[[], int]) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.limiter = RateLimiter(settings.dashboard_page_rate, settings.dashboard_page_burst)
        self.max_pending = settings.dashboard_max_pending_pages
        self.max_sessions = settings.dashboard_max_sessions
        self.connected = connected  # sessions with an open WebSocket, now
        self.pending = 0  # admitted loads not yet finished (the one building included)
        self._building = False
        self._line: deque[asyncio.Future[None]] = deque()

    def admit(self, viewer: str) -> Refusal | None:
        """None when a load from `viewer` may wait for its turn (and then counts as pending)."""
        wait = self.limiter.take(client_key(viewer))
        if wait > 0:
            refusal = Refusal(429, "rate_limited", RateLimiter.retry_after(wait))
        elif self.connected() >= self.max_sessions:
            refusal = Refusal(503, "sessions", FULL_RETRY)
        elif self.pending >= self.max_pending:
            refusal = Refusal(503, "busy", BUSY_RETRY)
        else:
            self.pending += 1
            return None
        self.runtime.metrics.pages_refused.labels(refusal.reason).inc()
        log.debug("page refused", extra={"client": viewer, "reason": refusal.reason})
        return refusal

    async def turn(self) -> None:
        """Wait until this load may build: never in the same pass of the event loop as another.

        Tornado reads a request and runs its handler in one go when the bytes are already there,
        so a backlog of connections would otherwise be built back to back in a single pass,
        the loop blocked all along and each load seeing no other pending.
        """
        loop = asyncio.get_running_loop()
        ticket = loop.create_future()
        self._line.append(ticket)
        if not self._building:
            self._building = True
            loop.call_soon(self._hand_over)  # after the loads this pass admits, not before
        try:
            await ticket
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled():
                self._hand_over()  # the turn came with the cancellation: pass it on
            else:
                self._line.remove(ticket)
            self.pending -= 1
            raise

    def done(self) -> None:
        """The load whose turn it was has finished: the next one in line may build."""
        self.pending -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        while self._line:
            ticket = self._line.popleft()
            if not ticket.done():
                # It resumes on a later pass of the event loop, after the I/O ready by then.
                ticket.set_result(None)
                return
        self._building = False


class PageHandler(DocHandler):
    """`GET /`: the dashboard page, when the gate admits the load; the light notice otherwise."""

    gate: PageGate

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        self.gate = kwargs["gate"]

    async def get(self, *args: Any, **kwargs: Any) -> None:
        refusal = self.gate.admit(self.gate.runtime.viewer(self.request))
        if refusal is not None:
            self.set_status(refusal.status)
            self.set_header("Retry-After", str(refusal.retry))
            self.set_header("Cache-Control", "no-store")
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(refusal.page())
            return
        await self.gate.turn()
        try:
            started = time.perf_counter()
            building = super().get(*args, **kwargs)
            if building is not None:
                await building
            self.gate.runtime.metrics.page_build_seconds.observe(time.perf_counter() - started)
        finally:
            self.gate.done()
