"""The single writer: drains the buffer in batches, one transaction at a time, in order."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal

import asyncpg

from services.common.db import connect, redact_url
from services.common.models import Tick
from services.fetcher import queries
from services.fetcher.buffer import TickBuffer
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.validation import DropReason

log = logging.getLogger(__name__)

# Errors that mean "the database is not reachable right now": keep the batch and retry.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # the connection's protocol state is broken after the server vanished mid-statement
    asyncpg.InternalClientError,
)
# Errors that mean "this data can never be stored": isolate and drop the offending ticks.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
)

WriteFn = Callable[[asyncpg.Connection, list[Tick]], Awaitable[int]]


class BatchWriter:
    """Owns the fetcher's only writing connection; nothing else inserts ticks."""

    def __init__(
        self,
        url: str,
        symbols: list[str],
        buffer: TickBuffer,
        metrics: FetcherMetrics,
        batch_size: int,
        role: str | None = None,
    ) -> None:
        self.url = url
        self.symbols = symbols
        self.buffer = buffer
        self.metrics = metrics
        self.batch_size = batch_size
        self.role = role or None
        self._conn: asyncpg.Connection | None = None
        self._outage_since: float | None = None
        self._backoff = 0.1
        # Backfilled chunks wait here; each is written in a transaction of its own.
        self._history: deque[tuple[list[Tick], asyncio.Future[int]]] = deque()
        self.hold: asyncio.Event | None = None  # when given, `run` starts writing once it is set

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect(self.url, self.role)
            # Ticks reference stocks; make sure every tracked symbol has its row.
            await self._conn.execute(queries.ENSURE_STOCKS, self.symbols)
            self.metrics.database_up.set(1)
        return self._conn

    async def run(self, stop: asyncio.Event) -> None:
        """Write until `stop` is set and the buffer is empty (the caller bounds the wait)."""
        while self.hold is not None and not (self.hold.is_set() or stop.is_set()):
            await asyncio.sleep(0.02)
        while not (stop.is_set() and len(self.buffer) == 0):
            if self._history and not stop.is_set():
                # Live ticks go first: history delays them by one chunk's write at most.
                await self.flush_once()
                await self.flush_history_once()
            elif not await self.buffer.wait(timeout=0.2):
                continue
            else:
                await self.flush_once()
            if self._outage_since is not None:
                await asyncio.sleep(self._backoff)

    async def flush_once(self) -> None:
        """Write one batch from the buffer, or put it back if the database is unreachable."""
        batch = self.buffer.take(self.batch_size)
        if not batch:
            return
        try:
            conn = await self._connection()
            await self._write(conn, batch)
        except asyncio.CancelledError:
            self.buffer.requeue(batch)  # shutdown ran out of time: reported as unflushed, not lost
            raise
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the batch must not be lost
            if not isinstance(exc, OUTAGE_ERRORS) and self._outage_since is None:
                # once per streak: a schema mismatch would otherwise log a traceback per retry
                log.exception("unexpected error writing a batch; it will be retried")
            evicted = self.buffer.requeue(batch)
            self._on_outage(exc, evicted)
            await self.close()
        else:
            self._recovered()
        finally:
            self.metrics.buffer_depth.set(len(self.buffer))

    def _recovered(self) -> None:
        if self._outage_since is not None:
            log.info(
                "database is back; flushing buffered ticks",
                extra={"outage_s": round(time.monotonic() - self._outage_since, 1),
                       "buffered": len(self.buffer)},
            )  # fmt: skip
            self._outage_since = None
            self._backoff = 0.1

    def submit_history(self, ticks: list[Tick]) -> asyncio.Future[int]:
        """Queue past ticks (at most one batch) for writing; the future says how many were new."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._history.append((ticks, future))
        return future

    async def flush_history_once(self) -> None:
        """Write the oldest queued history chunk, keeping it queued if the database is down."""
        if not self._history:
            return
        ticks, future = self._history[0]
        if future.cancelled():
            self._history.popleft()
            return
        try:
            conn = await self._connection()
            inserted = await self._write_history(conn, ticks)
        except OUTAGE_ERRORS as exc:
            self._on_outage(exc, 0)
            await self.close()
        except Exception as exc:  # noqa: BLE001 - bad history must not stop live writing
            log.exception("history chunk not written; dropped")
            self._history.popleft()
            if not future.done():  # the backfill may have been cancelled meanwhile
                future.set_exception(exc)
            await self.close()
        else:
            self._history.popleft()
            if not future.done():
                future.set_result(inserted)
            self._recovered()

    async def _write_history(self, conn: asyncpg.Connection, ticks: list[Tick]) -> int:
        """Insert past ticks in one transaction; count the new ones."""
        started = time.perf_counter()
        try:
            async with conn.transaction():
                row = await conn.fetchrow(queries.INSERT_HISTORY, *_columns(ticks))
                assert row is not None  # noqa: S101 - an aggregate always returns a row
                if row["inserted"]:
                    # History is announced as a window to reload, never as live `prices`.
                    payload = {"symbols": list(row["symbols"]), "start": _ms(row["first_ts"]),
                               "end": _ms(row["last_ts"])}  # fmt: skip
                    await conn.execute(queries.NOTIFY, "history", json.dumps(payload))
        except DATA_ERRORS as exc:
            return await self._isolate(conn, ticks, exc, self._write_history)
        self.metrics.ticks_backfilled.inc(row["inserted"])
        return self._written(started, row["inserted"])

    async def _write(self, conn: asyncpg.Connection, batch: list[Tick]) -> int:
        """Insert live ticks in one transaction and announce them; count the new ones."""
        started = time.perf_counter()
        try:
            async with conn.transaction():
                row = await conn.fetchrow(queries.INSERT_TICKS, *_columns(batch))
                assert row is not None  # noqa: S101 - an aggregate always returns a row
                if row["inserted"]:
                    # Delivered on commit, with the highest id the readers may now fetch up to.
                    await conn.execute(queries.NOTIFY, "prices", str(row["max_event_id"]))
        except DATA_ERRORS as exc:
            return await self._isolate(conn, batch, exc, self._write)
        return self._written(started, row["inserted"])

    def _written(self, started: float, inserted: int) -> int:
        self.metrics.batch_write_seconds.observe(time.perf_counter() - started)
        self.metrics.ticks_written.inc(inserted)
        self.metrics.last_write.set(time.time())
        return inserted

    async def _isolate(
        self, conn: asyncpg.Connection, batch: list[Tick], exc: BaseException, write: WriteFn
    ) -> int:
        """Split a batch the database refused until only the bad ticks are left, and drop those."""
        if len(batch) == 1:
            self.metrics.ticks_dropped.labels(DropReason.REJECTED).inc()
            log.error(
                "database refused a tick; dropped",
                extra={"symbol": batch[0].symbol, "ts": batch[0].ts.isoformat(), "error": str(exc)},
            )
            return 0
        mid = len(batch) // 2
        return await write(conn, batch[:mid]) + await write(conn, batch[mid:])

    def _on_outage(self, exc: BaseException, evicted: int) -> None:
        self.metrics.database_up.set(0)
        if evicted:
            self.metrics.ticks_dropped.labels(DropReason.BUFFER_FULL).inc(evicted)
            log.warning(
                "buffer full: oldest ticks dropped",
                extra={"dropped": evicted, "capacity": self.buffer.capacity},
            )
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "database unreachable; buffering ticks",
                extra={"url": redact_url(self.url), "error": str(exc) or type(exc).__name__},
            )
        self._backoff = min(self._backoff * 2, 2.0)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await asyncio.wait_for(conn.close(), 1.0)
            except Exception:  # noqa: BLE001 - the connection is already broken
                conn.terminate()


def _columns(
    ticks: list[Tick],
) -> tuple[list[str], list[datetime], list[Decimal], list[int | None]]:
    """The ticks as the column arrays the insert statements unnest."""
    return (
        [t.symbol for t in ticks], [t.ts for t in ticks],
        [t.price for t in ticks], [t.volume for t in ticks],
    )  # fmt: skip


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)
