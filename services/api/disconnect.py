"""Work for a client that has gone away is stopped, and its query cancelled, at once.

Starlette runs an endpoint to the end even when its client disconnects: a history read whose
reader reloaded or closed the page would keep its slot, its pooled connection and its query for
up to the statement timeout. Here the request runs as a task of its own while its connection is
watched; when the client goes before the response has begun, the task is cancelled, which makes
asyncpg cancel the running statement and the request's slots and connection go back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.metrics import ApiMetrics


class CancelOnDisconnect:
    """Cancels requests to `paths` whose client disconnects before the response starts."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, paths: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        early: deque[Message] = deque()  # what the watcher read that the app may still want

        async def app_receive() -> Message:
            return early.popleft() if early else await receive()

        async def watch() -> None:
            while (message := await receive())["type"] != "http.disconnect":
                early.append(message)

        watcher = asyncio.create_task(watch())

        async def app_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                # From here on the response (a stream listens itself) owns the connection.
                watcher.cancel()
            await send(message)

        async def handle() -> None:
            await self.app(scope, app_receive, app_send)

        handler = asyncio.create_task(handle())
        try:
            await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # this request itself is being cancelled
            watcher.cancel()
            handler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await handler
            raise
        # The watcher ends by itself only when the client went before the response began.
        gone = watcher.done() and not watcher.cancelled() and not handler.done()
        watcher.cancel()
        if not gone:
            await handler
            return
        self.metrics.abandoned.labels(scope["path"]).inc()
        handler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await handler
