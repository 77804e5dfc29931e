"""Live prices as Server-Sent Events, resumable with Last-Event-ID."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api import queries
from services.api.auth import READERS
from services.api.config import ApiSettings
from services.api.deps import (
    BroadcasterDep,
    ClientDep,
    InvalidParameter,
    LimitsDep,
    MetricsDep,
    SettingsDep,
    SymbolsDep,
    known_symbols,
    pooled,
)
from services.api.events import (
    GONE,
    SLOW,
    Chunk,
    Frame,
    Subscriber,
    encode,
    market_frame,
    price_frame,
)
from services.api.feed import MarketWatch, read_feed
from services.api.limits import STREAM_RETRY_AFTER, Busy, ClientLimits
from services.api.listener import Broadcaster
from services.api.metrics import ApiMetrics
from services.common.contract import Problem, ResetPayload

router = APIRouter(prefix="/api/v1/stream", tags=["stream"], dependencies=READERS)

REPLAY_CHUNK = 1000  # frames per write while replaying
STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`price` (with `id:`), `stock`, `history`, `market`, `alert` and `reset` "
        "events; "
        "`: heartbeat` comments.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    404: {"model": Problem, "description": "Unknown symbol"},
    422: {"model": Problem, "description": "Invalid parameter"},
    429: {
        "model": Problem,
        "description": "This client holds its most streams, or is over its history limits "
        "when resuming (Retry-After)",
    },
    503: {"model": Problem, "description": "Database unavailable or too many streams"},
}


# The headers an event stream needs: no caching, and no buffering by a proxy such as nginx.
STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]


BODY_SEND = "stockstreamer.body_send"  # the scope key under which ServerSend keeps it


class ServerSend:
    """Keeps the `send` of the outermost middleware in the scope, for live stream chunks.

    Installed outside every other middleware of ours. Those between it and the stream look only
    at a response's start (timing, CORS, cancel-on-disconnect, Starlette's exception tracking),
    so a live chunk, written thousands of times a second, skips their wrappers: 0.3-0.4 µs of
    API CPU per delivered event with 1,000 streams on 2 cores (bench_api_stream). A middleware
    that changed response bodies would not see those chunks.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[BODY_SEND] = send
        await self.app(scope, receive, send)


class StreamResponse(Response):
    """An event stream tied to one subscriber: what came first, then live chunks.

    Our own ASGI response rather than sse-starlette's EventSourceResponse, for this route only,
    because it was the cost. Measured by bench_api_stream (1,000 streams, 10 batches of 6 ticks
    a second, 2 cores), API CPU per delivered event and resident memory per 1,000 streams:
    12.5-13.7 µs and 65 MiB as it was; 7.4-7.9 µs and 58 MiB with sse-starlette handed the
    same shared chunks (an anyio cancel scope around every write; its sender, ping, disconnect
    and exit-signal tasks for every stream); 5.0-5.5 µs and 30 MiB with this response writing
    from a task of its own (a wake-up per stream per batch); 3.1 µs with the fan-out writing
    each chunk itself (Subscriber) and its lag sampled. The request's task only finishes a
    write that found the socket full; one more task waits for the client to go; heartbeats and
    shutdown come from the broadcaster, for every stream at once.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        subscriber: Subscriber,
        first: Sequence[Frame],
        broadcaster: Broadcaster,
        metrics: ApiMetrics,
        limits: ClientLimits,
        client: str,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = list(STREAM_HEADERS)
        self.subscriber = subscriber
        self.first = first
        self.broadcaster = broadcaster
        self.metrics = metrics
        self.limits = limits
        self.client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self.subscriber
        sub.writer = writer = asyncio.current_task()
        self.metrics.open_streams.inc()
        watcher = asyncio.create_task(_watch(receive, sub))
        try:
            await self._write(send, scope.get(BODY_SEND, send))
        except asyncio.CancelledError:
            if not sub.cut or writer is None:
                raise
            # Cut while a write was stuck behind a full socket: the response stays unfinished
            # and uvicorn drops the connection.
            writer.uncancel()
        finally:
            watcher.cancel()
            self.broadcaster.unsubscribe(sub)
            self.limits.streams.release(self.client)
            self.metrics.open_streams.dec()

    async def _write(self, send: Send, body: Send) -> None:
        """The response: its start through every middleware, its body through `body`."""
        sub = self.subscriber
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        for i in range(0, len(self.first), REPLAY_CHUNK):
            frames = self.first[i : i + REPLAY_CHUNK]
            for event, count in Counter(f.event for f in frames).items():
                self.metrics.events_sent.labels(event).inc(count)
            await _send(body, sub, b"".join(f.data for f in frames))
        sub.go_live(body)
        # Live chunks are written by the fan-out itself while this task waits; it only takes
        # over a write that found the socket full, and what queued behind it.
        while (items := await sub.next_write()) is not None:
            chunks: list[Chunk] = []
            for item in [*items, None]:
                if isinstance(item, Chunk):
                    chunks.append(item)  # consecutive chunks go in one write
                    continue
                if chunks:
                    await _send(body, sub, b"".join([c.data for c in chunks]))
                    chunks = []
                if item is not None:
                    sub.sending = True
                    await item.finish()
                    sub.sending = False
        if sub.closed != SLOW:
            sub.sending = True
            await body({"type": "http.response.body", "body": b"", "more_body": False})


async def _send(send: Send, sub: Subscriber, data: bytes) -> None:
    """One write; while it waits for room in the socket, a cut may cancel it."""
    sub.sending = True
    await send({"type": "http.response.body", "body": data, "more_body": True})
    sub.sending = False


async def _watch(receive: Receive, sub: Subscriber) -> None:
    """End the stream when its client goes: an idle stream has no write that would notice."""
    while (await receive())["type"] != "http.disconnect":
        pass
    sub.close(GONE)


def resume_point(header: str | None, query: int | None) -> int | None:
    """The id to resume after: the header (what a reconnecting browser sends) wins."""
    if header is not None and header.strip():
        text = header.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 19:
            raise InvalidParameter("header", "Last-Event-ID", "must be a non-negative integer")
        return int(text)
    return query


@router.get("", response_class=StreamResponse, status_code=200, responses=STREAM_DOC)
async def stream(
    request: Request,
    client: ClientDep,
    limits: LimitsDep,
    broadcaster: BroadcasterDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    symbols: SymbolsDep,
    last_event_id: Annotated[
        int | None, Query(ge=0, le=2**63 - 1, description="Resume after this event id.")
    ] = None,
    last_event_id_header: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="Resume after this id (wins over the query).",
            json_schema_extra={"pattern": r"^[0-9]{1,19}$"},
        ),
    ] = None,
) -> StreamResponse:
    """Every tick as a `price` event (all symbols when none are given), live or replayed."""
    resume = resume_point(last_event_id_header, last_event_id)
    limits.take_stream(client)
    try:
        if len(broadcaster.subscribers) >= settings.api_max_streams:
            metrics.streams_refused.inc()
            raise Busy("too many open streams, try again shortly", retry_after=STREAM_RETRY_AFTER)
        if resume is None:
            sub, first = await _start(request, client, broadcaster, settings, symbols, None)
        else:
            # a replay is a history read: it counts against the client's and the process's
            async with limits.history_read(client):
                sub, first = await _start(request, client, broadcaster, settings, symbols, resume)
    except BaseException:
        limits.streams.release(client)
        raise
    return StreamResponse(sub, first, broadcaster, metrics, limits, client)


async def _start(
    request: Request,
    client: str,
    broadcaster: Broadcaster,
    settings: ApiSettings,
    symbols: list[str] | None,
    resume: int | None,
) -> tuple[Subscriber, list[Frame]]:
    """A new subscriber and what it is sent first: ticks after `resume` or a `reset`, the market."""
    limit = settings.api_stream_replay_limit
    async with pooled(request, client) as conn:
        await known_symbols(conn, symbols)
        # Subscribe before reading the database: whatever commits from here on arrives live,
        # and live events up to what the reads below cover are skipped (no gap, no duplicate).
        sub = broadcaster.subscribe(
            frozenset(symbols) if symbols else None, settings.api_stream_queue_size
        )
        try:
            head: int = await conn.fetchval(queries.HEAD_EVENT_ID)
            first: list[Frame] = []
            reason = None
            after: int | None = None
            if resume is None:
                after = head
            elif resume > head:
                reason = "unknown resume point: newer than any event"
            else:
                if symbols is None:
                    rows = await conn.fetch(queries.REPLAY_AFTER, resume, limit + 1)
                else:
                    args = (resume, limit + 1, symbols)
                    rows = await conn.fetch(queries.REPLAY_SYMBOLS_AFTER, *args)
                if len(rows) > limit:
                    reason = f"resume point too old: more than {limit} ticks to replay"
                else:
                    first = [
                        price_frame(r["symbol"], r["ts_ms"], float(r["price"]), r["event_id"])
                        for r in rows
                    ]
                    after = rows[-1]["event_id"] if rows else resume
            if reason is not None:
                payload = ResetPayload(reason=reason, last_event_id=head)
                first = [Frame("reset", encode("reset", payload, head))]
                after = head
            # Read after subscribing, like the ticks: a change from here on arrives live.
            watch: MarketWatch = request.app.state.market_watch
            feed = await read_feed(conn, request.app.state.configured_feed)
            first.append(market_frame(await watch.market(feed)))
            broadcaster.resume(sub, after)
        except BaseException:
            broadcaster.unsubscribe(sub)
            raise
    return sub, first
