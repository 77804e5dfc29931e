"""History backfill: fill the window behind each symbol's last stored tick, as history."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime, timedelta

from services.common.db import OUTAGE_ERRORS
from services.common.models import Tick
from services.common.retry import Backoff
from services.fetcher.providers.base import HistoryUnavailable, Provider
from services.fetcher.writer import BatchWriter

log = logging.getLogger(__name__)

# Gaps shorter than this are not worth a vendor call (history has one point a minute at best).
MIN_GAP = timedelta(minutes=1)
# The most recent part of every gap is filled first, for all symbols: the windows people look at
# first fill within seconds, before the rest of a long history arrives.
RECENT = timedelta(days=1)
IN_FLIGHT = 2  # chunks queued at the writer at once: enough to keep it busy, no more

CallFn = Callable[[str, Callable[[], Awaitable[list[Tick]]]], Awaitable[list[Tick] | None]]


class Backfill:
    """Fills `window` before `until` where nothing is stored yet; safe to run again."""

    def __init__(
        self,
        writer: BatchWriter,
        symbols: Sequence[str],
        window: timedelta,
        call: CallFn,
        accept: Callable[[list[Tick]], list[Tick]],
    ) -> None:
        self.writer = writer
        self.symbols = list(symbols)
        self.window = window
        self.call = call  # the fetcher's retrying provider call
        self.accept = accept  # the fetcher's validation: bad ticks are counted and dropped
        # Set once the gaps are known: until then this run's first live ticks (which may carry
        # an old vendor time when the market is closed) could be mistaken for stored history.
        self.planned = asyncio.Event()

    async def stored_until(self, until: datetime) -> dict[str, datetime | None]:
        """Each symbol's latest stored tick before `until`, waiting out database outages."""
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                async with self.writer.use() as store:
                    return await store.stored_until(self.symbols, until)
            except OUTAGE_ERRORS:
                await backoff.sleep()

    def gaps(
        self, stored: dict[str, datetime | None], until: datetime
    ) -> list[tuple[str, datetime]]:
        """(symbol, start) for every symbol with at least MIN_GAP of history missing."""
        since = until - self.window
        result = []
        for symbol in self.symbols:
            last = stored.get(symbol)
            start = since if last is None else max(since, last + timedelta(milliseconds=1))
            if until - start >= MIN_GAP:
                result.append((symbol, start))
        return result

    async def run(self, provider: Provider, until: datetime) -> int:
        """Backfill every gap up to `until` (the start of live ticks); returns rows stored."""
        if self.window <= timedelta(0):
            self.planned.set()
            return 0
        try:
            gaps = self.gaps(await self.stored_until(until), until)
        finally:
            self.planned.set()
        total = 0
        split = until - RECENT
        recent = [(symbol, max(start, split), until) for symbol, start in gaps]
        older = [(symbol, start, split) for symbol, start in gaps if start < split]
        for symbol, start, end in recent + older:
            try:
                ticks = await self.call("history", self._fetch(provider, symbol, start, end))
            except HistoryUnavailable as exc:
                log.info("no history backfill: %s", exc, extra={"provider": provider.name})
                return total
            if ticks:
                total += await self._write(self.accept(ticks))
        if gaps:
            log.info(
                "history backfilled",
                extra={
                    "provider": provider.name,
                    "symbols": len(gaps),
                    "stored": total,
                    "window_h": round(self.window.total_seconds() / 3600, 1),
                },
            )
        return total

    @staticmethod
    def _fetch(
        provider: Provider, symbol: str, start: datetime, until: datetime
    ) -> Callable[[], Awaitable[list[Tick]]]:
        return lambda: provider.history(symbol, start, until)

    async def _write(self, ticks: list[Tick]) -> int:
        pending: deque[asyncio.Future[int]] = deque()
        stored = 0
        chunks = list(whole_minutes(ticks, self.writer.batch_size))
        for n, chunk in enumerate(chunks, 1):
            pending.append(self.writer.submit_history(chunk))
            while len(pending) >= IN_FLIGHT or (pending and n == len(chunks)):
                try:
                    stored += await pending.popleft()
                except Exception:  # noqa: BLE001 - one chunk lost is no reason to stop
                    log.warning("history chunk not stored", extra={"symbols": len(self.symbols)})
        return stored


def whole_minutes(ticks: list[Tick], size: int) -> Iterator[list[Tick]]:
    """Chunks of about `size` time-ordered ticks that never split a minute between two writes.

    History older than the raw retention is kept as minute bars, each final once written.
    """
    chunk: list[Tick] = []
    for tick in sorted(ticks, key=lambda t: t.ts):
        if len(chunk) >= size and _minute(tick) != _minute(chunk[-1]):
            yield chunk
            chunk = []
        chunk.append(tick)
    if chunk:
        yield chunk


def _minute(tick: Tick) -> int:
    return int(tick.ts.timestamp()) // 60
