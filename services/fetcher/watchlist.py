"""The watchlist: the symbols to track, kept in step with STOCKSTREAMER_SYMBOLS and followed live.

The API adds and removes rows and sends NOTIFY watchlist; the fetcher LISTENs on a connection of
its own, reads the whole table again after every notification and every reconnect (a few dozen
rows; nothing committed while it was not listening can be missed), and hands the rows over. An
idle connection is only probed, never read from.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import asyncpg

from services.common.db import (
    OUTAGE_ERRORS,
    Listening,
    UrlSource,
    current_url,
    listening,
    redact_url,
)
from services.common.retry import Backoff
from services.fetcher.metrics import FetcherMetrics

log = logging.getLogger(__name__)

State = Literal["pending", "backfilling", "live", "rejected"]
CHANNEL = "watchlist"
IDLE_CHECK_SECONDS = 5.0  # an idle LISTEN connection is probed this often to notice a dead peer
REASON_LENGTH = 500  # the column's limit

# At start: the `config` rows become STOCKSTREAMER_SYMBOLS ($1). A configured symbol missing is
# added (pending); an `api` row of one becomes `config`; a rejected configured one is tried again
# (a restart is how configuration is retried); `config` rows no longer configured are deleted.
# `api` rows are kept. One NOTIFY per changed row, in the same transaction.
RECONCILE = """
WITH upserted AS (
    INSERT INTO watchlist AS w (symbol, origin)
    SELECT symbol, 'config' FROM unnest($1::text[]) AS symbol
    ON CONFLICT (symbol) DO UPDATE
        SET origin = 'config',
            state = CASE WHEN w.state = 'rejected' THEN 'pending' ELSE w.state END,
            reason = NULL,
            updated_at = now()
        WHERE w.origin = 'api' OR w.state = 'rejected'
    RETURNING w.symbol, (xmax = 0) AS inserted
), deleted AS (
    DELETE FROM watchlist w
    WHERE w.origin = 'config' AND NOT w.symbol = ANY($1::text[])
    RETURNING w.symbol
), changed AS (
    SELECT symbol, CASE WHEN inserted THEN 'added' ELSE 'configured' END AS change FROM upserted
    UNION ALL
    SELECT symbol, 'removed' FROM deleted
)
SELECT symbol, change, pg_notify('watchlist', symbol) FROM changed ORDER BY symbol
"""

# Every row, in the order limits are applied: configuration first, then oldest request first.
READ = """
SELECT symbol, origin, state FROM watchlist
ORDER BY origin = 'config' DESC, requested_at, symbol
"""

# A row's new state ($2), progress ($3) and reason ($4), only from the states $5 (so that a row
# the API removed or reset meanwhile is left as the API left it); NOTIFY when it changed.
SET_STATE = """
WITH changed AS (
    UPDATE watchlist
    SET state = $2, progress = $3::real, reason = $4, updated_at = now()
    WHERE symbol = $1 AND state = ANY($5::text[])
      AND (state, progress, reason) IS DISTINCT FROM ($2, $3::real, $4)
    RETURNING symbol
)
SELECT pg_notify('watchlist', symbol) FROM changed
"""

# Where each state may be entered from.
FROM_STATES: dict[State, list[str]] = {
    "backfilling": ["pending", "backfilling"],
    "live": ["pending", "backfilling"],
    "rejected": ["pending", "backfilling", "live"],
}

SELECT_ONE = "SELECT 1"


@dataclass(frozen=True, slots=True)
class Entry:
    """One watchlist row as the fetcher needs it."""

    symbol: str
    origin: str
    state: str

    @property
    def tracked(self) -> bool:
        return self.state != "rejected"


def beyond(entries: Sequence[Entry], limit: int) -> list[str]:
    """The tracked symbols past the first `limit` of `entries` (in READ's order): rejected rows
    do not count."""
    tracked = [e.symbol for e in entries if e.tracked]
    return tracked[limit:]


async def reconcile(conn: asyncpg.Connection, configured: Sequence[str]) -> list[tuple[str, str]]:
    """Make the `config` rows equal to `configured`; (symbol, change) for every row changed."""
    rows = await conn.fetch(RECONCILE, list(configured))
    return [(r["symbol"], r["change"]) for r in rows]


async def read(conn: asyncpg.Connection) -> list[Entry]:
    """Every row of the watchlist, in READ's order."""
    return [Entry(r["symbol"], r["origin"], r["state"]) for r in await conn.fetch(READ)]


async def set_state(
    conn: asyncpg.Connection,
    symbol: str,
    state: State,
    progress: float | None = None,
    reason: str | None = None,
    only_from: Sequence[str] | None = None,
) -> bool:
    """Move `symbol` to `state` (from the states it may come from); whether the row changed."""
    allowed = list(only_from) if only_from is not None else FROM_STATES[state]
    if reason is not None:
        reason = reason[:REASON_LENGTH]
    rows = await conn.fetch(SET_STATE, symbol, state, progress, reason, allowed)
    return bool(rows)


class WatchlistListener:
    """Keeps a LISTEN connection on `watchlist` and calls `on_rows` with the whole table at
    start, after every notification and after every reconnect."""

    def __init__(
        self,
        url: UrlSource,
        role: str | None,
        configured: Sequence[str],
        metrics: FetcherMetrics,
        on_rows: Callable[[list[Entry]], None],
    ) -> None:
        self.url = url
        self.role = role
        self.configured = list(configured)
        self.metrics = metrics
        self.on_rows = on_rows
        self.reconciled = False  # the config rows are made once, at the first connection
        self.connected = False
        self.pid: int | None = None  # the LISTEN connection's server process, while connected
        self._wake = asyncio.Event()
        self._backoff = Backoff(0.1, 5.0)
        self._lost = False

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after any failure."""
        while True:
            try:
                await self._session()
            except OUTAGE_ERRORS as exc:
                if not self._lost:
                    log.warning(
                        "watchlist listener lost the database; reconnecting",
                        extra={
                            "url": redact_url(current_url(self.url)),
                            "error": str(exc) or repr(exc),
                        },
                    )
            except Exception:
                # A bug must not freeze the symbol set for the life of the process: start over.
                log.exception("watchlist listener failed; restarting it")
            self._lost = True
            await self._backoff.sleep()

    async def _session(self) -> None:
        async with listening(self.url, self.role, (CHANNEL,), self._notified, self._wake) as link:
            conn = link.conn
            try:
                if not self.reconciled:
                    changes = await reconcile(conn, self.configured)
                    self.reconciled = True
                    if changes:
                        log.info(
                            "watchlist follows STOCKSTREAMER_SYMBOLS",
                            extra={"changes": ",".join(f"{s}:{c}" for s, c in changes)},
                        )
                if self._lost:
                    self.metrics.watchlist_reconnects.inc()
                    log.info("watchlist listener reconnected; reading the watchlist again")
                    self._lost = False
                self.pid = conn.get_server_pid()
                self.connected = True
                self.metrics.watchlist_listener_up.set(1)
                self._backoff.reset()
                while True:
                    # Cleared before the read, never after it: a notification during the read
                    # sets it again and brings one more read.
                    self._wake.clear()
                    self.on_rows(await read(conn))
                    await self._until_woken(link)
            finally:
                self.connected = False
                self.pid = None
                self.metrics.watchlist_listener_up.set(0)

    async def _until_woken(self, link: Listening) -> None:
        """Until a notification (or wake()) comes; an idle connection is probed meanwhile, and
        the table is read again only when something may have changed."""
        while True:
            # (asyncio.timeout, not wait_for: on 3.11 a wake-up at the moment of a
            # cancellation would swallow it, and the fetcher could not stop)
            try:
                async with asyncio.timeout(IDLE_CHECK_SECONDS):
                    await self._wake.wait()
            except TimeoutError:
                await link.conn.fetchval(SELECT_ONE, timeout=IDLE_CHECK_SECONDS)
            if link.lost.is_set():
                raise ConnectionError("watchlist LISTEN connection closed")
            if self._wake.is_set():
                return

    def _notified(self, _conn: object, _pid: int, _channel: str, _payload: object) -> None:
        self._wake.set()

    def wake(self) -> None:
        """Read the watchlist again soon (e.g. after a symbol's work ended)."""
        self._wake.set()
