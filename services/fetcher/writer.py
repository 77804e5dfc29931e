"""The single writer: owns the fetcher's one connection and drains the buffer into it, in order."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg

from services.common.db import OUTAGE_ERRORS, UrlSource, connect, current_url, redact_url
from services.common.models import Bar, Tick
from services.common.retry import Backoff
from services.fetcher.buffer import TickBuffer
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.store import BarsWritten, TickStore, Written
from services.fetcher.validation import DropReason

log = logging.getLogger(__name__)

# Errors that mean "this data can never be stored": isolate and drop the offending ticks.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
)
UPKEEP_SECONDS = 3600.0  # retention and tomorrow's partitions, checked hourly (and on connect)

WriteFn = Callable[[TickStore, list[Tick]], Awaitable[Written]]
HistoryWrite = Callable[[TickStore], Awaitable[int]]


class BatchWriter:
    """Owns the fetcher's only database connection; everything the fetcher stores goes here."""

    def __init__(
        self,
        url: UrlSource,
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
        self._store: TickStore | None = None
        self._lock = asyncio.Lock()  # one user of the connection at a time
        self._outage_since: float | None = None
        self._backoff = Backoff(0.1, 2.0)
        self._wait = 0.0  # before the next attempt, during an outage
        self._upkeep_at = 0.0
        self._newest_live: dict[str, float] = {}  # epoch seconds, per symbol
        # History chunks (vendor bars) wait here; each is written in a transaction of its own.
        self._history: deque[tuple[HistoryWrite, asyncio.Future[int]]] = deque()
        self.hold: asyncio.Event | None = None  # when given, live ticks wait until it is set

    @property
    def connected(self) -> bool:
        return self._store is not None and not self._store.conn.is_closed()

    @asynccontextmanager
    async def use(self) -> AsyncIterator[TickStore]:
        """The connection's store, for one piece of work; an outage closes it and propagates."""
        async with self._lock:
            try:
                if self._store is None or self._store.conn.is_closed():
                    conn = await connect(self.url, self.role)
                    try:
                        self._store = await TickStore.open(conn, self.symbols)
                    except BaseException:
                        conn.terminate()
                        raise
                    self._upkeep_at = time.monotonic() + UPKEEP_SECONDS
                    self.metrics.database_up.set(1)
                yield self._store
            except OUTAGE_ERRORS:
                await self._close()
                raise

    async def run(self, stop: asyncio.Event) -> None:
        """Write until `stop` is set and the buffer is empty (the caller bounds the wait)."""
        while not (stop.is_set() and len(self.buffer) == 0):
            held = self.hold is not None and not self.hold.is_set() and not stop.is_set()
            if self._history and not stop.is_set():
                # Live ticks go first: history delays them by one chunk's write at most.
                if not held:
                    await self.flush_once()
                await self.flush_history_once()
            elif held or not await self.buffer.wait(timeout=0.2):
                await asyncio.sleep(0.02 if held else 0)
            else:
                await self.flush_once()
            if time.monotonic() >= self._upkeep_at and self.connected and not stop.is_set():
                await self.upkeep_once()
            if self._outage_since is not None:
                await asyncio.sleep(self._wait)

    async def upkeep_once(self) -> None:
        """Apply retention and make the coming partitions; a failure waits for the next turn."""
        self._upkeep_at = time.monotonic() + UPKEEP_SECONDS
        try:
            async with self.use() as store:
                dropped = await store.upkeep()
        except Exception as exc:  # noqa: BLE001 - upkeep must never stop the writing
            log.warning("partition upkeep failed; retried later", extra={"error": repr(exc)})
        else:
            self.metrics.partitions_dropped.inc(len(dropped))

    async def flush_once(self) -> None:
        """Write one batch from the buffer, or put it back if the database is unreachable."""
        batch = self.buffer.take(self.batch_size)
        if not batch:
            return
        try:
            async with self.use() as store:
                await self._write(store, batch)
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
                extra={
                    "outage_s": round(time.monotonic() - self._outage_since, 1),
                    "buffered": len(self.buffer),
                },
            )
            self._outage_since = None
            self._backoff.reset()

    def submit_bars(self, bars: list[Bar]) -> asyncio.Future[int]:
        """Queue vendor minute bars (a chunk of whole days) for writing, between live batches;
        the future says how many minutes were new."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._history.append((lambda store: self._write_bars(store, bars), future))
        return future

    async def flush_history_once(self) -> None:
        """Write the oldest queued history chunk, keeping it queued if the database is down."""
        if not self._history:
            return
        write, future = self._history[0]
        if future.cancelled():
            self._history.popleft()
            return
        try:
            async with self.use() as store:
                inserted = await write(store)
        except OUTAGE_ERRORS as exc:
            self._on_outage(exc, 0)
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

    async def _write_bars(self, store: TickStore, bars: list[Bar]) -> int:
        """Store vendor bars in one transaction; count the minutes that were new."""
        written = await self._bars_guarded(store, bars)
        if written.expired:
            self.metrics.bars_dropped.labels(DropReason.EXPIRED).inc(written.expired)
        self.metrics.bars_stored.inc(written.bars)
        self.metrics.ticks_backfilled.inc(written.ticks)
        if written.bars:
            self.metrics.last_write.set(time.time())
        return written.bars

    async def _bars_guarded(self, store: TickStore, bars: list[Bar]) -> BarsWritten:
        """`store.write_bars`, halving what the database refuses until the culprit is alone."""
        try:
            return await store.write_bars(bars)
        except DATA_ERRORS as exc:
            if len(bars) == 1:
                self.metrics.bars_dropped.labels(DropReason.REJECTED).inc()
                log.error(
                    "database refused a bar; dropped",
                    extra={
                        "symbol": bars[0].symbol,
                        "start": bars[0].start.isoformat(),
                        "error": str(exc),
                    },
                )
                return BarsWritten()
            mid = len(bars) // 2
            first = await self._bars_guarded(store, bars[:mid])
            return first.plus(await self._bars_guarded(store, bars[mid:]))

    async def _write(self, store: TickStore, batch: list[Tick]) -> int:
        """Insert live ticks in one transaction and announce them; count the new ones."""
        return await self._guarded(store, batch, TickStore.write_live)

    async def _guarded(self, store: TickStore, ticks: list[Tick], write: WriteFn) -> int:
        """`write` the ticks (returns how many were new); split what the database refuses."""
        started = time.perf_counter()
        try:
            written = await write(store, ticks)
        except DATA_ERRORS as exc:
            if len(ticks) == 1:
                self.metrics.ticks_dropped.labels(DropReason.REJECTED).inc()
                log.error(
                    "database refused a tick; dropped",
                    extra={
                        "symbol": ticks[0].symbol,
                        "ts": ticks[0].ts.isoformat(),
                        "error": str(exc),
                    },
                )
                return 0
            mid = len(ticks) // 2
            first = await self._guarded(store, ticks[:mid], write)
            return first + await self._guarded(store, ticks[mid:], write)
        if written.expired:
            self.metrics.ticks_dropped.labels(DropReason.EXPIRED).inc(written.expired)
        self.metrics.batch_write_seconds.observe(time.perf_counter() - started)
        for symbol, count in written.per_symbol.items():
            self.metrics.ticks_written.labels(symbol).inc(count)
        self.metrics.ticks_as_bars.inc(written.as_bars)
        if written.stored:  # a batch of duplicates is no sign of life
            self.metrics.last_write.set(time.time())
        if write is TickStore.write_live:
            for symbol, ts in written.newest.items():
                newest = max(ts.timestamp(), self._newest_live.get(symbol, 0.0))
                self._newest_live[symbol] = newest
                self.metrics.newest_tick.labels(symbol).set(newest)
        return written.stored

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
                extra={
                    "url": redact_url(current_url(self.url)),
                    "error": str(exc) or type(exc).__name__,
                },
            )
        self._wait = self._backoff.next()

    async def close(self) -> None:
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        if self._store is not None:
            conn, self._store = self._store.conn, None
            self.metrics.database_up.set(0)
            try:
                await asyncio.wait_for(conn.close(), 1.0)
            except Exception:  # noqa: BLE001 - the connection is already broken
                conn.terminate()
