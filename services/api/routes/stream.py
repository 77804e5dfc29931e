"""Live prices as Server-Sent Events, resumable with Last-Event-ID."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from services.api import queries
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
from services.api.events import SHUTDOWN, Frame, Subscriber, encode, market_frame, price_frame
from services.api.feed import MarketWatch, read_feed
from services.api.limits import STREAM_RETRY_AFTER, Busy, ClientLimits
from services.api.listener import Broadcaster
from services.api.metrics import ApiMetrics
from services.common.contract import Problem, ResetPayload

router = APIRouter(prefix="/api/v1/stream", tags=["stream"])

REPLAY_CHUNK = 1000  # frames per write while replaying
SHUTDOWN_GRACE = 1.0  # seconds a stream gets to finish its last write on shutdown
STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`price` (with `id:`), `stock`, `history`, `market` and `reset` events; "
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


class StreamResponse(EventSourceResponse):
    """An event stream tied to one subscriber: cut at once when the client falls behind."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        subscriber: Subscriber,
        broadcaster: Broadcaster,
        metrics: ApiMetrics,
        heartbeat: float,
        limits: ClientLimits,
        client: str,
    ) -> None:
        self._shutdown = anyio.Event()
        super().__init__(
            content,
            ping=heartbeat,
            sep="\n",
            ping_message_factory=lambda: ServerSentEvent(comment="heartbeat", sep="\n"),
            shutdown_event=self._shutdown,
            shutdown_grace_period=SHUTDOWN_GRACE,
        )
        self.subscriber = subscriber
        self.broadcaster = broadcaster
        self.metrics = metrics
        self.limits = limits
        self.client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.metrics.open_streams.inc()
        try:
            async with anyio.create_task_group() as group:

                async def cut_when_dropped() -> None:
                    # Its writes are stuck behind a full socket: abandon them rather than wait.
                    await self.subscriber.dropped.wait()
                    group.cancel_scope.cancel()

                async def end_on_shutdown() -> None:
                    await self._shutdown.wait()
                    self.subscriber.close(SHUTDOWN)

                group.start_soon(cut_when_dropped)
                group.start_soon(end_on_shutdown)
                await super().__call__(scope, receive, send)
                group.cancel_scope.cancel()
        finally:
            self.broadcaster.unsubscribe(self.subscriber)
            self.limits.streams.release(self.client)
            self.metrics.open_streams.dec()


def resume_point(header: str | None, query: int | None) -> int | None:
    """The id to resume after: the header (what a reconnecting browser sends) wins."""
    if header is not None and header.strip():
        text = header.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 19:
            raise InvalidParameter("header", "Last-Event-ID", "must be a non-negative integer")
        return int(text)
    return query


async def _events(
    sub: Subscriber, first: Sequence[Frame], metrics: ApiMetrics
) -> AsyncIterator[bytes]:
    for i in range(0, len(first), REPLAY_CHUNK):
        chunk = first[i : i + REPLAY_CHUNK]
        for frame in chunk:
            metrics.events_sent.labels(frame.event).inc()
        yield b"".join(f.data for f in chunk)
    sent: Counter[str] = Counter()
    while (batch := await sub.next_batch()) is not None:
        data = sub.render(batch, sent)
        for event, count in sent.items():
            metrics.events_sent.labels(event).inc(count)
        prices = sent["price"]
        sent.clear()
        if data:
            yield data
            metrics.observe_sent(batch, prices)  # resumed once the bytes went to the socket


@router.get("", response_class=EventSourceResponse, responses=STREAM_DOC)
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
    return StreamResponse(
        _events(sub, first, metrics),
        sub,
        broadcaster,
        metrics,
        settings.api_stream_heartbeat,
        limits,
        client,
    )


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
            if resume is None:
                sub.after = head
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
                    sub.after = rows[-1]["event_id"] if rows else resume
            if reason is not None:
                payload = ResetPayload(reason=reason, last_event_id=head)
                first = [Frame("reset", encode("reset", payload, head))]
                sub.after = head
            # Read after subscribing, like the ticks: a change from here on arrives live.
            watch: MarketWatch = request.app.state.market_watch
            feed = await read_feed(conn, request.app.state.configured_feed)
            first.append(market_frame(await watch.market(feed)))
        except BaseException:
            broadcaster.unsubscribe(sub)
            raise
    return sub, first
