"""One LISTEN connection per process: each notification's new rows are read once and fanned out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
from pydantic import ValidationError

from services.api import queries
from services.api.events import (
    SHUTDOWN,
    SLOW,
    Frame,
    Subscriber,
    encode,
    history_frame,
    price_frame,
)
from services.api.metrics import ApiMetrics
from services.api.rows import stock_from_row
from services.common.contract import HistoryPayload
from services.common.db import OUTAGE_ERRORS, UrlSource, connect, current_url, redact_url
from services.common.retry import Backoff

log = logging.getLogger(__name__)

CHANNELS = ("prices", "stocks", "history")
FETCH_LIMIT = 5000  # rows per query, so a long catch-up is fanned out in bounded batches
IDLE_CHECK_SECONDS = 5.0  # an idle LISTEN connection is probed this often to notice a dead peer
# Metadata changed this long before a reconnect is re-announced, to cover clock skew.
SKEW_MARGIN = timedelta(seconds=60)


def stock_frame(row: asyncpg.Record) -> Frame:
    """A `stock` event carrying the full Stock resource."""
    stock = stock_from_row(row)
    return Frame("stock", encode("stock", stock), (stock.symbol,))


class Broadcaster:
    """Owns the LISTEN connection and the set of open streams of this process."""

    def __init__(self, url: UrlSource, role: str | None, metrics: ApiMetrics) -> None:
        self.url = url
        self.role = role or None
        self.metrics = metrics
        self.subscribers: set[Subscriber] = set()
        self.last_seen: int | None = None  # highest live event id fanned out so far
        self.connected = False
        self._wake = asyncio.Event()
        self._prices_due = False
        self._stocks_due: dict[str, None] = {}  # ordered set of symbols
        self._history_due: list[HistoryPayload] = []
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(0.1, 2.0)
        self._lost_at: datetime | None = None  # when the listener last lost its connection
        self._notified_at: float | None = None  # first `prices` notification not yet drained

    def subscribe(self, symbols: frozenset[str] | None, capacity: int) -> Subscriber:
        sub = Subscriber(symbols, capacity)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-listener")

    async def stop(self) -> None:
        """End every stream and the listener."""
        for sub in list(self.subscribers):
            sub.close(SHUTDOWN)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def publish(self, batch: Sequence[Frame]) -> None:
        """Hand a batch to every stream; a stream whose queue is full is cut, not waited for."""
        for sub in list(self.subscribers):
            if not sub.offer(batch):
                self.subscribers.discard(sub)
                sub.close(SLOW)
                self.metrics.slow_disconnects.inc()
                log.warning("stream client too slow; disconnected", extra={"queued": sub.capacity})

    def _on_notification(self, _conn: object, _pid: int, channel: str, message: object) -> None:
        payload = str(message)
        self.metrics.notifications.labels(channel).inc()
        if channel == "prices":
            self._notified_at = self._notified_at or time.monotonic()
            try:
                due = self.last_seen is None or int(payload) > self.last_seen
            except ValueError:
                due = True
            self._prices_due = self._prices_due or due
        elif channel == "stocks":
            self._stocks_due[payload] = None
        elif channel == "history":
            try:
                # The notification carries the very object the `history` event sends on.
                self._history_due.append(HistoryPayload.model_validate_json(payload))
            except ValidationError:
                log.warning("ignoring a malformed history notification", extra={"payload": payload})
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except OUTAGE_ERRORS as exc:
                if self._lost_at is None:
                    log.warning(
                        "stream listener lost the database; reconnecting",
                        extra={
                            "url": redact_url(current_url(self.url)),
                            "error": str(exc) or repr(exc),
                        },
                    )
            except Exception:
                # A bug must not silence every stream for the life of the process: start over.
                log.exception("stream listener failed; restarting it")
            self._lost_at = self._lost_at or datetime.now(UTC)
            await self._backoff.sleep()

    async def _session(self) -> None:
        """Listen on one connection until it fails; raises the failure."""
        conn = await connect(self.url, self.role)
        lost = asyncio.Event()

        def on_lost(_conn: object) -> None:
            lost.set()
            self._wake.set()

        conn.add_termination_listener(on_lost)
        try:
            for channel in CHANNELS:
                await conn.add_listener(channel, self._on_notification)
            head = await conn.fetchval(queries.HEAD_EVENT_ID)
            if self.last_seen is None:
                # Streams that started before the first connection must miss nothing either.
                afters = [s.after for s in self.subscribers if s.after is not None]
                self.last_seen = min([head, *afters])
            if self._lost_at is not None:
                self.metrics.listener_reconnects.inc()
                since = self._lost_at - SKEW_MARGIN
                rows = await conn.fetch(queries.STOCKS_CHANGED_SINCE, since)
                self._stocks_due.update((r["symbol"], None) for r in rows)
                log.info(
                    "stream listener reconnected; catching up", extra={"after": self.last_seen}
                )
                self._lost_at = None
            self._prices_due = True  # whatever committed while we were not listening
            self.connected = True
            self.metrics.listener_up.set(1)
            self._backoff.reset()
            await self._serve(conn, lost)
        finally:
            self.connected = False
            self.metrics.listener_up.set(0)
            conn.terminate()

    async def _serve(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        while True:
            await self._drain(conn)
            try:
                await asyncio.wait_for(self._wake.wait(), IDLE_CHECK_SECONDS)
            except TimeoutError:
                await conn.fetchval(queries.SELECT_ONE, timeout=IDLE_CHECK_SECONDS)
            self._wake.clear()
            if lost.is_set():
                raise ConnectionError("LISTEN connection closed")

    async def _drain(self, conn: asyncpg.Connection) -> None:
        """Fetch what the pending notifications announced and publish it."""
        if not (self._prices_due or self._stocks_due or self._history_due):
            return
        started = time.perf_counter()
        notified, self._notified_at = self._notified_at, None
        while self._prices_due:
            assert self.last_seen is not None  # noqa: S101 - set when the session began
            # Cleared before the read, never after it: a notification that arrives while the
            # read is under way sets it again, and its ticks are read by the next round.
            self._prices_due = False
            rows = await conn.fetch(queries.TICKS_AFTER, self.last_seen, FETCH_LIMIT)
            if len(rows) == FETCH_LIMIT:
                self._prices_due = True  # more than one read's worth: keep going
            if rows:
                self.last_seen = rows[-1]["event_id"]
                self.publish(
                    [
                        price_frame(
                            r["symbol"], r["ts_ms"], float(r["price"]), r["event_id"], notified
                        )
                        for r in rows
                    ]
                )
        if self._stocks_due:
            symbols = list(self._stocks_due)
            rows = await conn.fetch(queries.STOCKS, symbols)
            for symbol in symbols:  # not clear(): more may have arrived during the query
                del self._stocks_due[symbol]
            self.publish([stock_frame(r) for r in rows])
        if self._history_due:
            batch, self._history_due = self._history_due, []
            self.publish([history_frame(p) for p in batch])
        self.metrics.stream_lag.observe(time.perf_counter() - started)
