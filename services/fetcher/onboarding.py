"""How a symbol joins: the vendor asked, rejected past limits, backfilled with progress, live.

A symbol added to the watchlist is `pending` while the vendor is asked whether it exists (again
and again while it does not answer), `backfilling` while its history is filled, then `live`; one
the vendor does not know, or one past the limit of symbols, is `rejected` with the reason. Every
state is stored on the watchlist row (NOTIFY watchlist), so the API and the dashboard follow it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

from services.common.db import OUTAGE_ERRORS
from services.common.market import Market
from services.common.retry import Backoff
from services.fetcher import queries
from services.fetcher.backfill import Backfill, CallFn
from services.fetcher.chain import Member, ProviderChain
from services.fetcher.config import FetcherSettings
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.providers.base import Provider, ProviderError, ProviderFatal
from services.fetcher.store import TickStore
from services.fetcher.validation import DropLog
from services.fetcher.watchlist import State, set_state
from services.fetcher.writer import BatchWriter

log = logging.getLogger(__name__)
T = TypeVar("T")

PROGRESS_SECONDS = 1.0  # a backfilling symbol's progress is stored at most this often
ONBOARD_RETRY_MAX = 60.0  # the longest wait before asking the vendor about a symbol again
ONBOARD_FAILED_WAIT = 30.0  # after a symbol's work failed unexpectedly, before it is tried again
# A symbol the vendor could not be asked about (down, or out of retries): asked again later.
UNANSWERED: Final = object()


class Onboarding:
    """Takes symbols on for the fetcher: the vendor's verdict, the backfill, the stored states."""

    def __init__(
        self,
        settings: FetcherSettings,
        writer: BatchWriter,
        symbols: list[str],
        chain: ProviderChain,
        history: Provider | None,
        call: CallFn,
        metrics: FetcherMetrics,
        drops: DropLog,
        market: Market,
        take_out: Callable[[Member, ProviderError], None],
        track: Callable[[str], None],
        untrack: Callable[[str, bool], None],
        changed: Callable[[], None],
        wake: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.symbols = symbols  # the fetcher's tracked symbols: `track` and `untrack` change it
        self.chain = chain
        self.history = history
        self.call = call
        self.metrics = metrics
        self.drops = drops
        self.market = market
        self.take_out = take_out
        self.track = track
        self.untrack = untrack
        self.changed = changed  # the fetcher's healing leaves out the symbols being taken on
        self.wake = wake  # the watchlist is read again
        self.starting: list[str] = []  # configured rows the start checks and backfills itself
        self.running: dict[str, asyncio.Task[None]] = {}  # added symbols being taken on
        self.retry_at: dict[str, float] = {}  # symbols whose taking on failed: not before
        self.rejecting: set[str] = set()
        self.tasks: set[asyncio.Task[Any]] = set()  # states being stored alongside
        self._backfilling: set[str] = set()  # symbols whose progress is stored
        self._progress_at: dict[str, float] = {}
        self._turn = asyncio.Semaphore(1)  # added symbols are backfilled one at a time

    def spawn(self, work: Coroutine[Any, Any, object]) -> None:
        """Run `work` alongside (a state to store); cancelled at shutdown, failures logged."""
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self._spawned)

    def _spawned(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("watchlist update failed", exc_info=error)

    def reject_later(self, symbol: str, reason: str, kind: str) -> None:
        """Reject `symbol` alongside, unless that is under way already."""
        if symbol not in self.rejecting:
            self.rejecting.add(symbol)
            self.spawn(self.reject(symbol, reason, kind))

    def forget(self, wanted: set[str]) -> None:
        """Stop taking on the symbols no longer `wanted`."""
        for symbol, task in list(self.running.items()):
            if symbol not in wanted:
                del self.running[symbol]
                task.cancel()

    async def _with_store(self, work: Callable[[TickStore], Awaitable[T]]) -> T:
        """`work` on the writer's connection, waiting out database outages."""
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                async with self.writer.use() as store:
                    return await work(store)
            except OUTAGE_ERRORS:
                await backoff.sleep()

    async def _enter(
        self, symbol: str, state: State, progress: float | None = None, reason: str | None = None
    ) -> None:
        """Store `symbol`'s new state (NOTIFY watchlist), waiting out database outages."""
        await self._with_store(lambda store: set_state(store.conn, symbol, state, progress, reason))

    async def enter_backfilling(self, symbol: str) -> None:
        """Store `symbol` as backfilling, its progress from now on too."""
        await self._enter(symbol, "backfilling", 0.0)
        self._backfilling.add(symbol)
        self._progress_at[symbol] = time.monotonic()

    def backfilled(self, symbols: Sequence[str]) -> None:
        """`symbols`' backfill is over: their progress is stored no more."""
        self._backfilling.difference_update(symbols)

    async def went_live(self, symbols: Sequence[str], origin: str) -> None:
        """Store `symbols` as live, counted by where they came from."""
        for symbol in symbols:
            await self._enter(symbol, "live")
            self.metrics.symbols_added.labels(origin).inc()
            log.info("symbol live", extra={"symbol": symbol})
        self.starting = [s for s in self.starting if s not in symbols]
        self.wake()

    def progress(self, shares: dict[str, float]) -> None:
        """A backfill's progress: stored for each symbol at most once a PROGRESS_SECONDS."""
        now = time.monotonic()
        for symbol, share in shares.items():
            due = self._progress_at.get(symbol, -math.inf) + PROGRESS_SECONDS
            if symbol in self._backfilling and share < 1.0 and now >= due:
                self._progress_at[symbol] = now
                self.spawn(self._store_progress(symbol, share))

    async def _store_progress(self, symbol: str, share: float) -> None:
        try:
            async with self.writer.use() as store:
                await set_state(
                    store.conn, symbol, "backfilling", round(share, 3), only_from=["backfilling"]
                )
        except OUTAGE_ERRORS:
            pass  # the next share, or going live, is stored instead

    async def _verdict(self, symbol: str) -> str | None | object:
        """The vendor's reason not to track `symbol`, None when it knows it, or UNANSWERED."""
        member = self.chain.active
        provider = member.provider

        async def ask() -> tuple[str | None]:
            return (await provider.check_symbol(symbol),)

        try:
            answer = await self.call("check_symbol", ask)
        except ProviderFatal as exc:
            self.take_out(member, exc)
            return UNANSWERED
        except Exception as exc:  # noqa: BLE001 - an unusable answer: asked again later
            log.warning(
                "symbol not checked: unusable answer",
                extra={"symbol": symbol, "provider": provider.name, "error": str(exc)},
            )
            return UNANSWERED
        return UNANSWERED if answer is None else answer[0]

    async def check_starting(self) -> list[str]:
        """The configured symbols new to the watchlist that the vendor knows; the others are
        rejected. One it could not be asked about is tracked as configured."""
        starting = list(self.starting)
        verdicts = await asyncio.gather(*(self._verdict(s) for s in starting))
        accepted = []
        for symbol, verdict in zip(starting, verdicts, strict=True):
            if symbol not in self.symbols:
                continue  # removed or rejected meanwhile
            if isinstance(verdict, str):
                await self.reject(symbol, verdict, "unknown")
                continue
            if verdict is UNANSWERED:
                log.warning(
                    "configured symbol not checked (the vendor did not answer); tracking it",
                    extra={"symbol": symbol},
                )
            accepted.append(symbol)
        self.starting = accepted
        return accepted

    async def reject(self, symbol: str, reason: str, kind: str) -> None:
        """Stop tracking `symbol` and store why."""
        self.rejecting.add(symbol)
        try:
            self.untrack(symbol, True)  # purged: its ticks not yet stored are dropped
            self.starting = [s for s in self.starting if s != symbol]
            self.metrics.symbols_rejected.labels(kind).inc()
            log.warning("symbol rejected", extra={"symbol": symbol, "reason": reason})
            await self._enter(symbol, "rejected", reason=reason)
        finally:
            self.rejecting.discard(symbol)

    def onboard_later(self, symbol: str, origin: str) -> None:
        """Take on `symbol` alongside (a task of its own, cancelled when it leaves the list)."""
        task = asyncio.create_task(self._onboard(symbol, origin), name=f"onboard-{symbol}")
        self.running[symbol] = task
        task.add_done_callback(lambda done: self._onboarded(symbol, done))

    def _onboarded(self, symbol: str, task: asyncio.Task[None]) -> None:
        if self.running.get(symbol) is task:
            del self.running[symbol]
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("taking on a symbol failed", extra={"symbol": symbol}, exc_info=error)
            self.retry_at[symbol] = time.monotonic() + ONBOARD_FAILED_WAIT
            loop = asyncio.get_running_loop()
            loop.call_later(ONBOARD_FAILED_WAIT, self.wake)
        self.changed()
        self.wake()  # its row may have changed meanwhile

    async def _onboard(self, symbol: str, origin: str) -> None:
        """Take on a symbol added to the watchlist: ask the vendor, backfill, then live."""
        backoff = Backoff(1.0, ONBOARD_RETRY_MAX)
        while (verdict := await self._verdict(symbol)) is UNANSWERED:
            await backoff.sleep()  # still pending: the vendor is asked again
        if isinstance(verdict, str):
            await self.reject(symbol, verdict, "unknown")
            return
        await self._with_store(lambda store: store.conn.execute(queries.ENSURE_STOCKS, [symbol]))
        source = self.history
        if source is None or self.settings.backfill <= timedelta(0):
            self.track(symbol)
            await self.went_live([symbol], origin)
            return
        await self.enter_backfilling(symbol)
        backfill = Backfill(
            self.writer,
            [symbol],
            self.settings.backfill,
            self.call,
            self.metrics,
            self.drops,
            self.market,
            progress=self.progress,
        )
        run = asyncio.create_task(backfill.run(source, datetime.now(UTC), self._turn))
        try:
            # Live prices start once the backfill knows where stored history ends.
            await backfill.planned.wait()
            self.track(symbol)
            try:
                await run
            except ProviderFatal as exc:
                log.error(
                    "history source refused: no backfill",
                    extra={"symbol": symbol, "provider": source.name, "error": str(exc)},
                )
            except Exception:
                log.exception("history backfill failed", extra={"symbol": symbol})
        finally:
            run.cancel()
            self._backfilling.discard(symbol)
        await self.went_live([symbol], origin)
