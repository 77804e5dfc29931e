"""One LISTEN connection per process: each notification's new rows are read once and fanned out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
from pydantic import ValidationError

from services.api import queries
from services.api.events import (
    HEARTBEAT,
    SHUTDOWN,
    SLOW,
    Chunk,
    Frame,
    Subscriber,
    alert_frame,
    history_frame,
    market_frame,
    price_frame,
    render,
    stock_frame,
)
from services.api.feed import Feed, MarketWatch, seconds_until
from services.api.metrics import ApiMetrics
from services.api.rows import removed_stock, stock_from_row
from services.common.contract import AlertFiring, HistoryPayload, Market
from services.common.db import OUTAGE_ERRORS, UrlSource, current_url, listening, redact_url
from services.common.retry import Backoff
from services.common.symbols import is_valid_symbol

log = logging.getLogger(__name__)

CHANNELS = ("prices", "stocks", "history", "feed", "watchlist", "alert")
FETCH_LIMIT = 5000  # rows per query, so a long catch-up is fanned out in bounded batches
# Firings sent as `alert` events after the listener was away: the oldest missed, at most this
# many (a notification on the page, not a record: GET /api/v1/alerts/{id}/events is that).
ALERT_CATCH_UP = 100
IDLE_CHECK_SECONDS = 5.0  # an idle LISTEN connection is probed this often to notice a dead peer
# Any database login may NOTIFY: a `history` notification is believed only for tracked symbols
# and a window from the epoch to at most this far ahead of now.
HISTORY_AHEAD = timedelta(days=1)
DROP_LOG_EVERY = 60.0  # seconds between two log lines about ignored notifications
# The market's state is looked at again at least this often, whatever the calendar says: a
# suspended machine's timers may wake late.
MARKET_RECHECK_SECONDS = 60.0
LAG_SAMPLES = 100  # streams per fan-out whose commit-to-send lag is observed, at least


def history_fault(payload: HistoryPayload, now: datetime) -> str | None:
    """Why a `history` notification is not believable (None: it is, but for tracked symbols)."""
    if not payload.symbols or not all(is_valid_symbol(s) for s in payload.symbols):
        return "symbols"
    latest = (now + HISTORY_AHEAD).timestamp() * 1000
    if not 0 <= payload.start <= payload.end <= latest:
        return "window"
    return None


def merge_history(pending: HistoryPayload | None, new: HistoryPayload) -> HistoryPayload:
    """One `history` event for both: every symbol of either, over both windows."""
    if pending is None:
        return new
    symbols = pending.symbols + [s for s in new.symbols if s not in pending.symbols]
    return HistoryPayload(
        symbols=symbols, start=min(pending.start, new.start), end=max(pending.end, new.end)
    )


def alert_firing(row: asyncpg.Record) -> AlertFiring:
    """An `alert` event's data from a row of queries.FIRINGS."""
    return AlertFiring(**dict(row))


class Broadcaster:
    """Owns the LISTEN connection and the set of open streams of this process."""

    def __init__(
        self,
        url: UrlSource,
        role: str | None,
        metrics: ApiMetrics,
        history_interval: float = 5.0,
        watch: MarketWatch | None = None,
        configured: Feed | None = None,
        heartbeat: float = 15.0,
    ) -> None:
        self.url = url
        self.role = role or None
        self.metrics = metrics
        self.history_interval = history_interval  # least seconds between two `history` events
        self.heartbeat = heartbeat  # most seconds a stream goes without a byte
        # Open streams, in the order they subscribed: the order of every fan-out.
        self.subscribers: dict[Subscriber, None] = {}
        self.closing = False  # the process is stopping: streams end as soon as they start
        self.last_seen: int | None = None  # highest live event id fanned out so far
        self.connected = False
        self._wake = asyncio.Event()
        self._prices_due = False
        self._stocks_due: dict[str, None] = {}  # ordered set of symbols
        self._watchlist_due: dict[str, None] = {}  # added, changed or removed: ordered set
        self._shown: set[str] = set()  # the watchlist as the streams were last told it
        self._alerts_due: dict[int, None] = {}  # firing ids, an ordered set
        self.last_firing: int | None = None  # highest firing id sent as an `alert` event
        self._history_due: list[HistoryPayload] = []  # notified, tracked-ness not yet checked
        self._history_pending: HistoryPayload | None = None  # merged, waiting for its turn
        self._history_next = 0.0  # time.monotonic() from which the next `history` event may go
        self._drop_logged = -DROP_LOG_EVERY
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(0.1, 2.0)
        self._lost_at: datetime | None = None  # when the listener last lost its connection
        self._notified_at: float | None = None  # first `prices` notification not yet drained
        self.watch = watch or MarketWatch()
        # what the settings describe, until the fetcher's row is read
        self.feed = configured or Feed.configured([], None, False)
        self.market: Market | None = None  # the state last announced in a `market` event
        self._feed_due = False  # re-read the feed row
        self._feed_announce = False  # and then send every stock again (its failover flag)
        self._market_wake = asyncio.Event()
        self._market_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None

    def subscribe(self, symbols: frozenset[str] | None, capacity: int) -> Subscriber:
        """A new stream; live batches reach it from now on (see `resume`)."""
        sub = Subscriber(symbols, capacity)
        self.subscribers[sub] = None
        if self.closing:
            sub.close(SHUTDOWN)
        return sub

    def resume(self, sub: Subscriber, after: int | None) -> None:
        """`sub`'s live prices up to `after` reached its client another way (None: none did)."""
        self._count(sub.resume(after), 1)

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.pop(sub, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-listener")
        self._market_task = asyncio.create_task(self._watch_market(), name="market-watch")
        self._heartbeat_task = asyncio.create_task(self._beat(), name="stream-heartbeat")

    async def end_streams(self, grace: float) -> None:
        """End every stream cleanly, and those that start from now on; drop those still
        writing after `grace` seconds (their clients stopped reading)."""
        self.closing = True
        for sub in list(self.subscribers):
            sub.close(SHUTDOWN)
        deadline = time.monotonic() + grace
        while self.subscribers and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for sub in list(self.subscribers):
            sub.close(SLOW)

    async def stop(self) -> None:
        """End every stream and the listener."""
        self.closing = True
        for sub in list(self.subscribers):
            sub.close(SHUTDOWN)
        for task in (self._task, self._market_task, self._heartbeat_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def publish(self, batch: Sequence[Frame]) -> None:
        """Hand a batch to every stream, encoded once per subscription (all symbols, or one set
        of them); a stream whose queue is full is cut, not waited for."""
        if not self.subscribers:
            return
        # Live ticks are published in id order: a stream whose resume point is below the
        # batch's first tick is past it for good and shares what its subscription gets.
        first = next((f.event_id for f in batch if f.event == "price"), None)
        shared: dict[frozenset[str] | None, tuple[Chunk | None, Counter[str]]] = {}
        takers: dict[frozenset[str] | None, int] = {}
        cut: list[Subscriber] = []
        # Commit-to-send lag of one stream in `every`, spread evenly over the fan-out's order
        # (the lag grows along it): an observation costs about as much as the write it times.
        every = max(1, len(self.subscribers) // LAG_SAMPLES)
        observe = self.metrics.commit_to_send.observe
        for i, sub in enumerate(self.subscribers):
            if sub.pending:
                if not sub.offer(batch):  # encoded for it once its resume point is known
                    cut.append(sub)
                continue
            if sub.after is not None and first is not None:
                if first <= sub.after:
                    # still inside its resume overlap: a chunk of its own
                    own, sent = render(batch, sub.symbols, sub.after)
                    self._count(sent, 1)
                    if own is not None and not sub.offer(own):
                        cut.append(sub)
                    continue
                sub.after = None
            key = sub.symbols
            found = shared.get(key)
            if found is None:
                found = shared[key] = render(batch, key)
                takers[key] = 0
            chunk = found[0]
            if chunk is None:
                continue
            if not sub.offer(chunk):
                cut.append(sub)
                continue
            takers[key] += 1
            if chunk.notified is not None and i % every == 0 and sub.idle:
                observe(time.monotonic() - chunk.notified)  # written to its socket just now
        for key, (_, sent) in shared.items():
            self._count(sent, takers[key])
        self._cut(cut)

    def _count(self, sent: Counter[str], streams: int) -> None:
        """Events handed to `streams` streams: counted once per fan-out, not once per stream."""
        if streams:
            for event, count in sent.items():
                self.metrics.events_sent.labels(event).inc(count * streams)

    def _cut(self, subs: Sequence[Subscriber]) -> None:
        for sub in subs:
            self.subscribers.pop(sub, None)
            sub.close(SLOW)
            self.metrics.slow_disconnects.inc()
            log.warning("stream client too slow; disconnected", extra={"queued": sub.capacity})

    async def _beat(self) -> None:
        """A `: heartbeat` comment on every stream that was sent nothing for `heartbeat` seconds.

        One timer for every stream, not one each; a stream that live events keep busy gets none.
        Looked at twice an interval, an idle stream gets one every interval.
        """
        while True:
            await asyncio.sleep(self.heartbeat / 2)
            cut = []
            for sub in self.subscribers:
                if sub.fresh:
                    sub.fresh = False
                elif not sub.offer(HEARTBEAT):
                    cut.append(sub)
            self._cut(cut)

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
            if is_valid_symbol(payload):
                self._stocks_due[payload] = None
            else:
                self._drop(channel, "malformed", payload)
        elif channel == "history":
            try:
                # The notification carries the very object the `history` event sends on.
                history = HistoryPayload.model_validate_json(payload)
            except ValidationError:
                self._drop(channel, "malformed", payload)
                return
            fault = history_fault(history, datetime.now(UTC))
            if fault is not None:
                self._drop(channel, fault, payload)
                return
            self._history_due.append(history)
        elif channel == "feed":
            # the payload says nothing we need: the row is read again
            self._feed_due = self._feed_announce = True
        elif channel == "watchlist":
            if is_valid_symbol(payload):
                self._watchlist_due[payload] = None
            else:
                self._drop(channel, "malformed", payload)
        elif channel == "alert":
            if payload.isascii() and payload.isdigit() and len(payload) <= 18:
                self._alerts_due[int(payload)] = None
            else:
                self._drop(channel, "malformed", payload)
        self._wake.set()

    def _drop(self, channel: str, reason: str, payload: str) -> None:
        """Count a notification not acted on; say so in the log now and then, not each time."""
        self.metrics.notifications_dropped.labels(channel, reason).inc()
        now = time.monotonic()
        if now - self._drop_logged >= DROP_LOG_EVERY:
            self._drop_logged = now
            log.warning(
                "ignoring a notification",
                extra={"channel": channel, "reason": reason, "payload": payload[:200]},
            )

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
        async with listening(
            self.url, self.role, CHANNELS, self._on_notification, self._wake
        ) as link:
            try:
                await self._caught_up(link.conn)
                await self._serve(link.conn, link.lost)
            finally:
                self.connected = False
                self.metrics.listener_up.set(0)

    async def _caught_up(self, conn: asyncpg.Connection) -> None:
        """A new connection's start: where streams resume, and what changed while away."""
        head = await conn.fetchval(queries.HEAD_EVENT_ID)
        if self.last_seen is None:
            # Streams that started before the first connection must miss nothing either.
            afters = [s.after for s in self.subscribers if s.after is not None]
            self.last_seen = min([head, *afters])
        watched = {r["symbol"] for r in await conn.fetch(queries.ALL_SYMBOLS)}
        if self.last_firing is None:
            self.last_firing = await conn.fetchval(queries.LAST_FIRING)
        if self._lost_at is not None:
            self.metrics.listener_reconnects.inc()
            # Every stock again, once: its metadata or its live source (which leaves no
            # trace to ask for since a moment) may have changed while we were away; and
            # those removed meanwhile, as removed.
            self._stocks_due.update((s, None) for s in sorted(watched))
            self._watchlist_due.update((s, None) for s in sorted(self._shown - watched))
            self._alerts_due.update(
                (r["firing_id"], None)
                for r in await conn.fetch(queries.FIRINGS_AFTER, self.last_firing, ALERT_CATCH_UP)
            )
            log.info("stream listener reconnected; catching up", extra={"after": self.last_seen})
            self._lost_at = None
        self._shown = watched
        self._prices_due = True  # whatever committed while we were not listening
        self._feed_due = True  # and the feed, which may have changed meanwhile
        self.connected = True
        self.metrics.listener_up.set(1)
        self._backoff.reset()

    async def _serve(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        while True:
            await self._drain(conn)
            idle = IDLE_CHECK_SECONDS
            if self._history_pending is not None:  # wake for its turn
                idle = min(idle, max(0.0, self._history_next - time.monotonic()))
            try:
                await asyncio.wait_for(self._wake.wait(), idle)
            except TimeoutError:
                if idle == IDLE_CHECK_SECONDS:
                    await conn.fetchval(queries.SELECT_ONE, timeout=IDLE_CHECK_SECONDS)
            self._wake.clear()
            if lost.is_set():
                raise ConnectionError("LISTEN connection closed")

    async def _drain(self, conn: asyncpg.Connection) -> None:
        """Fetch what the pending notifications announced and publish it."""
        if not (
            self._prices_due
            or self._stocks_due
            or self._watchlist_due
            or self._alerts_due
            or self._history_due
            or self._feed_due
        ) and not (self._history_pending is not None and time.monotonic() >= self._history_next):
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
        if self._feed_due:
            await self._read_feed(conn)
        if self._stocks_due or self._watchlist_due:
            await self._announce_stocks(conn)
        if self._alerts_due:
            # Cleared before the read, like prices: one notified during it is read next round.
            ids = list(self._alerts_due)
            self._alerts_due.clear()
            rows = await conn.fetch(queries.FIRINGS, ids)
            self.last_firing = max([self.last_firing or 0, *ids])
            self.publish([alert_frame(alert_firing(r)) for r in rows])
        if self._history_due:
            await self._check_history(conn)
        if self._history_pending is not None and time.monotonic() >= self._history_next:
            # At most one `history` event per interval, whoever notifies: each makes every
            # dashboard reload its charts.
            pending, self._history_pending = self._history_pending, None
            self._history_next = time.monotonic() + self.history_interval
            self.publish([history_frame(pending)])
        self.metrics.stream_lag.observe(time.perf_counter() - started)

    async def _announce_stocks(self, conn: asyncpg.Connection) -> None:
        """A `stock` event for each symbol notified: its row, or `removed` for a watchlist
        change that left none (metadata of a symbol not in the watchlist says nothing)."""
        # Cleared before the read: a notification during it is read again next round (should
        # the read fail, the reconnection announces every stock anyway).
        metadata, changed = list(self._stocks_due), list(self._watchlist_due)
        self._stocks_due.clear()
        self._watchlist_due.clear()
        rows = await conn.fetch(queries.STOCKS, list(dict.fromkeys(metadata + changed)))
        found = {r["symbol"] for r in rows}
        gone = [s for s in changed if s not in found]
        self._shown = (self._shown | found).difference(gone)
        self.publish(
            [stock_frame(stock_from_row(r)) for r in rows]
            + [stock_frame(removed_stock(s)) for s in gone]
        )

    async def _read_feed(self, conn: asyncpg.Connection) -> None:
        """Take the feed row in; on a change, every stock again and the market's state."""
        self._feed_due = False  # before the read: a notification during it means read again
        row = await conn.fetchrow(queries.FEED)
        feed = self.feed if row is None else Feed.from_row(row)
        announce, self._feed_announce = self._feed_announce, False
        if feed != self.feed:
            self.feed = feed
            self._market_wake.set()
        if announce:
            rows = await conn.fetch(queries.STOCKS, None)
            self.publish([stock_frame(stock_from_row(r)) for r in rows])

    async def _watch_market(self) -> None:
        """Announce the market's state when it changes: at opens and closes, and with the feed."""
        # a timer for the calendar's next open or close, not a poll
        while True:
            self._market_wake.clear()
            try:
                market, until = await self.watch.market_until(self.feed)
            except Exception:
                log.exception("market state unavailable; trying again")
                await asyncio.sleep(MARKET_RECHECK_SECONDS)
                continue
            if market != self.market:
                self.market = market
                self.publish([market_frame(market)])
            delay = min(seconds_until(self.watch.clock, until), MARKET_RECHECK_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._market_wake.wait(), delay)

    async def _check_history(self, conn: asyncpg.Connection) -> None:
        """Merge the `history` notifications about tracked symbols into the pending event."""
        batch = list(self._history_due)
        named = list(dict.fromkeys(s for p in batch for s in p.symbols))
        tracked = {r["symbol"] for r in await conn.fetch(queries.KNOWN_SYMBOLS, named)}
        del self._history_due[: len(batch)]  # not before: a failed read leaves them due
        for payload in batch:
            if tracked.issuperset(payload.symbols):
                self._history_pending = merge_history(self._history_pending, payload)
            else:
                self._drop("history", "untracked", payload.model_dump_json())
