"""The alerts service: every committed live tick, in order, against every alert in force.

One connection LISTENs (`prices`, `alerts`, `stocks`) and does the evaluation's reads and
writes; each batch of ticks is evaluated in memory and its firings, the alerts' armed states
and the resume point are stored in one transaction that also sends `alert` for each firing. A
restart (or a lost connection) starts from the stored state again: no firing is repeated,
none missed. Deliveries run beside it (delivery.py), their attempts stored through a small pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

import asyncpg

from services.alerts import store as stored
from services.alerts.channels import BROWSER
from services.alerts.config import AlertsSettings
from services.alerts.delivery import Deliverer, Notice
from services.alerts.evaluator import Evaluator, Outcome
from services.alerts.metrics import AlertsMetrics
from services.alerts.store import AlertStore, spec_of
from services.common.db import (
    OUTAGE_ERRORS,
    create_pool,
    current_url,
    listening,
    redact_url,
)
from services.common.retry import Backoff
from services.common.symbols import is_valid_symbol

log = logging.getLogger(__name__)

CHANNELS = ("prices", "alerts", "stocks")
IDLE_CHECK_SECONDS = 5.0  # an idle LISTEN connection is probed this often to notice a dead peer


class AlertService:
    """Evaluates ticks against alerts and hands firings to the deliverer."""

    def __init__(
        self, settings: AlertsSettings, channels: dict[str, str], metrics: AlertsMetrics
    ) -> None:
        self.url = settings.database_url_now
        self.role = settings.alerts_db_role or None
        self.batch_size = settings.alert_batch_size
        self.shutdown_timeout = settings.alerts_shutdown_timeout
        self.channels = channels
        self.metrics = metrics
        self.evaluator = Evaluator(settings.alert_rearm_pct)
        self.alerts: dict[int, asyncpg.Record] = {}  # the active alerts' rows, by id
        self.cursor = 0  # the last tick event id evaluated and stored
        self.connected = False
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._prices_due = True
        # Notifications arrive in commit order: `_head` is the highest tick event id announced
        # so far, and each change (an alert added or deleted, a previous close) waits in
        # `_changes` with the head at its arrival, so that the ticks committed before it are
        # evaluated before it, and the ticks after it, after.
        self._head = 0
        self._changes: deque[tuple[str, str, int]] = deque()  # channel, payload, head
        self._pool: asyncpg.Pool | None = None  # where delivery attempts are stored
        self._backoff = Backoff(0.1, 2.0)
        self._outage_since: float | None = None
        self.deliverer = Deliverer(
            channels,
            self._record,
            metrics,
            attempts=settings.alert_delivery_attempts,
            concurrency=settings.alert_delivery_concurrency,
            wait_initial=settings.alert_retry_wait_initial,
            wait_max=settings.alert_retry_wait_max,
        )
        metrics.armed.set_function(lambda: self.evaluator.armed)
        metrics.active.set_function(lambda: len(self.evaluator))

    def stop(self) -> None:
        """Finish the batch under way, then stop (SIGTERM)."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> int:
        """Evaluate until stopped, riding out database outages; then let deliveries finish."""
        try:
            while not self._stopping.is_set():
                try:
                    await self._session()
                except OUTAGE_ERRORS as exc:
                    if self._outage_since is None:
                        self._outage_since = time.monotonic()
                        log.warning(
                            "database unreachable; retrying",
                            extra={
                                "url": redact_url(current_url(self.url)),
                                "error": str(exc) or repr(exc),
                            },
                        )
                except Exception:
                    # A bug must not end alerting for good: start over from the stored state.
                    log.exception("alerts session failed; starting over from the stored state")
                if not self._stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), self._backoff.next())
        finally:
            cancelled = await self.deliverer.drain(self.shutdown_timeout)
            if cancelled:
                log.warning(
                    "deliveries unfinished at shutdown; redelivered at the next start",
                    extra={"deliveries": cancelled},
                )
            if self._pool is not None:
                try:
                    await asyncio.wait_for(self._pool.close(), 2.0)
                except OUTAGE_ERRORS:  # TimeoutError among them
                    self._pool.terminate()  # the database is gone: nothing to close politely
        return 0

    # -- one connection's life ---------------------------------------------------------------
    async def _session(self) -> None:
        async with listening(
            self.url, self.role, CHANNELS, self._on_notification, self._wake
        ) as link:
            conn = link.conn
            try:
                store = AlertStore(conn)
                self.cursor = await store.prepare(self.channels)
                self._head = max(self._head, await store.head())
                if self._pool is None:
                    self._pool = await create_pool(self.url, self.role, min_size=1, max_size=2)
                self._prices_due = True  # whatever committed while we were not listening
                await self._load(store)
                await self._redeliver(store)
                self.connected = True
                self.metrics.database_up.set(1)
                self._backoff.reset()
                if self._outage_since is not None:
                    log.info(
                        "database is back; catching up",
                        extra={"outage_s": round(time.monotonic() - self._outage_since, 1)},
                    )
                    self._outage_since = None
                log.info(
                    "alerts service ready",
                    extra={
                        "after_event_id": self.cursor,
                        "alerts": len(self.evaluator),
                        "channels": ",".join([BROWSER, *sorted(self.channels)]),
                    },
                )
                while not self._stopping.is_set():
                    await self._drain(store)
                    if self._stopping.is_set():
                        break
                    # (asyncio.timeout, not wait_for: on 3.11 a wake-up at the moment of a
                    # cancellation would swallow it)
                    try:
                        async with asyncio.timeout(IDLE_CHECK_SECONDS):
                            await self._wake.wait()
                    except TimeoutError:
                        await conn.fetchval("SELECT 1", timeout=IDLE_CHECK_SECONDS)
                    self._wake.clear()
                    if link.lost.is_set():
                        raise ConnectionError("LISTEN connection closed")
            finally:
                self.connected = False
                self.metrics.database_up.set(0)
                if self._stopping.is_set() and not conn.is_closed():
                    with contextlib.suppress(*OUTAGE_ERRORS):
                        await asyncio.wait_for(conn.close(), 2.0)

    def _on_notification(self, _conn: object, _pid: int, channel: str, message: object) -> None:
        payload = str(message)
        if channel == "prices":
            try:
                self._head = max(self._head, int(payload))
            except ValueError:
                pass  # any login may NOTIFY: read what there is anyway
            self._prices_due = True
        elif channel == "alerts" and payload.isdigit() and len(payload) < 19:
            self._changes.append((channel, payload, self._head))
        elif channel == "stocks" and is_valid_symbol(payload):
            self._changes.append((channel, payload, self._head))
        else:
            log.warning(
                "ignoring a malformed notification",
                extra={"channel": channel, "payload": payload[:40]},
            )
            return
        self._wake.set()

    async def _load(self, store: AlertStore) -> None:
        """Every alert in force, its symbol's previous close and last price; fire at once
        what already holds (an alert added while we were away)."""
        rows = await store.active_alerts()
        self.evaluator.clear()
        self.alerts = {r["id"]: r for r in rows}
        symbols = {r["symbol"] for r in rows}
        for symbol, close in (await store.previous_closes(symbols)).items():
            self.evaluator.set_previous_close(symbol, close)
        for row in rows:
            self.evaluator.add(spec_of(row))
        self.evaluator.last.update(await store.last_prices(symbols, self.cursor))
        out = Outcome()
        self.evaluator.check_all(out)
        if out:
            await self._commit(store, out, None)

    async def _redeliver(self, store: AlertStore) -> None:
        """Deliver what was fired and not yet delivered (or given up on) to every channel."""
        rows = await stored.pending_deliveries(store.conn)
        for row in rows:
            self.deliverer.submit(Notice.from_row(row), row["channel"], row["attempts"])
        if rows:
            log.info("redelivering firings not yet delivered", extra={"deliveries": len(rows)})

    # -- work --------------------------------------------------------------------------------
    async def _drain(self, store: AlertStore) -> None:
        """Act on what the notifications announced, in commit order: ticks, and the alerts
        and previous closes that changed between them."""
        while not self._stopping.is_set():
            if self._changes:
                head = self._changes[0][2]
                while await self._evaluate(store, head):  # the ticks committed before it
                    if self._stopping.is_set():
                        return
                await self._apply_changes(store, head)
            elif self._prices_due:
                # Cleared before the read: a notification during it means read again.
                self._prices_due = False
                if await self._evaluate(store, None):
                    self._prices_due = True  # more than one read's worth: keep going
            else:
                return

    async def _evaluate(self, store: AlertStore, upto: int | None) -> bool:
        """Evaluate and store the next batch of live ticks (up to event id `upto`); whether it
        was a full one (more may follow)."""
        rows = await store.ticks_after(self.cursor, self.batch_size, upto)
        if not rows:
            return False
        out = Outcome()
        tick = self.evaluator.tick
        started = time.perf_counter()
        for row in rows:
            tick(row["symbol"], row["price"], row["ts"], row["event_id"], out)
        per_tick = (time.perf_counter() - started) / len(rows)
        await self._commit(store, out, rows[-1]["event_id"])
        self.metrics.evaluation.observe(per_tick)
        self.metrics.ticks.inc(len(rows))
        return len(rows) == self.batch_size

    async def _apply_changes(self, store: AlertStore, head: int) -> None:
        """Every change that arrived at `head`: alerts first, then previous closes."""
        alerts: dict[int, None] = {}
        symbols: dict[str, None] = {}
        while self._changes and self._changes[0][2] == head:
            channel, payload, _ = self._changes.popleft()
            if channel == "alerts":
                alerts[int(payload)] = None
            else:
                symbols[payload] = None
        if alerts:
            await self._apply_alerts(store, list(alerts))
        if symbols:
            await self._apply_closes(store, list(symbols))

    async def _apply_alerts(self, store: AlertStore, ids: list[int]) -> None:
        """Take new alerts in (each fires at once if its condition already holds) and drop
        deleted ones."""
        out = Outcome()
        for alert_id in ids:
            row = await store.alert(alert_id)
            if row is None or row["deleted_at"] is not None:
                if self.evaluator.remove(alert_id):
                    self.alerts.pop(alert_id, None)
                    log.info("alert removed", extra={"alert_id": alert_id})
                continue
            if alert_id in self.evaluator:
                continue
            symbol = row["symbol"]
            if symbol not in self.evaluator.symbols():
                closes = await store.previous_closes([symbol])
                self.evaluator.set_previous_close(symbol, closes.get(symbol))
            if symbol not in self.evaluator.last:
                self.evaluator.last.update(await store.last_prices([symbol], self.cursor))
            self.alerts[alert_id] = row
            self.evaluator.add(spec_of(row))
            log.info(
                "alert added",
                extra={
                    "alert_id": alert_id,
                    "symbol": symbol,
                    "condition": row["condition"],
                    "value": row["value"],
                },
            )
            self.evaluator.check(alert_id, out)
        if out:
            await self._commit(store, out, None)

    async def _apply_closes(self, store: AlertStore, changed: list[str]) -> None:
        """Move change_pct lines to their symbols' previous closes."""
        watched = self.evaluator.symbols()
        symbols = [s for s in changed if s in watched]
        if symbols:
            for symbol, close in (await store.previous_closes(symbols)).items():
                self.evaluator.set_previous_close(symbol, close)

    async def _commit(self, store: AlertStore, out: Outcome, cursor: int | None) -> None:
        """Store an outcome (and the resume point), then start its deliveries."""
        browser = {
            f.alert_id for f in out.firings if BROWSER in self.alerts[f.alert_id]["channels"]
        }
        if out or cursor is not None:
            ids = await store.commit(out, cursor, browser)
        else:
            ids = []
        if cursor is not None:
            self.cursor = cursor
            self.metrics.cursor.set(cursor)
        rearmed = sum(1 for armed in out.armed.values() if armed)
        if rearmed:
            self.metrics.rearmed.inc(rearmed)
        committed = time.time()
        for firing_id, firing in zip(ids, out.firings, strict=True):
            alert = self.alerts[firing.alert_id]
            self.metrics.firings.inc()
            if firing.alert_id in browser:  # delivered by the notification just committed
                self.metrics.deliveries.labels(BROWSER, "delivered").inc()
                if firing.event_id is not None:
                    latency = committed - firing.ts.timestamp()
                    self.metrics.tick_to_delivery.labels(BROWSER).observe(latency)
            log.info(
                "alert fired",
                extra={
                    "alert_id": firing.alert_id,
                    "firing_id": firing_id,
                    "symbol": alert["symbol"],
                    "price": firing.price,
                    "line": firing.line,
                    "event_id": firing.event_id,
                },
            )
            notice = Notice(
                firing_id,
                firing.alert_id,
                alert["symbol"],
                alert["condition"],
                alert["value"],
                alert["note"],
                firing.price,
                firing.line,
                firing.ts,
                firing.event_id,
            )
            for channel in alert["channels"]:
                if channel != BROWSER:
                    self.deliverer.submit(notice, channel)

    async def _record(
        self, firing_id: int, channel: str, attempt: int, result: str, detail: str | None
    ) -> None:
        """Store one delivery attempt, waiting out a database outage."""
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                assert self._pool is not None  # noqa: S101 - made before any delivery starts
                await stored.record_deliveries(
                    self._pool, [(firing_id, channel, attempt, result, detail)]
                )
                return
            except OUTAGE_ERRORS:
                await backoff.sleep()
