"""History backfill: the window behind each symbol's last stored data, from vendor minute bars."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from services.common.db import OUTAGE_ERRORS
from services.common.market import Market
from services.common.models import Bar
from services.common.retry import Backoff
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.providers.base import HistoryUnavailable, Provider
from services.fetcher.validation import DropLog, DropReason, split_valid_bars
from services.fetcher.writer import BatchWriter

log = logging.getLogger(__name__)
T = TypeVar("T")

MINUTE = timedelta(minutes=1)
DAY = timedelta(days=1)
# One request asks for at most about this many bars (symbols x open minutes; the provider pages
# through them) and at most a month, so that one answer held in memory stays small.
REQUEST_BARS = 60_000
REQUEST_SPAN = timedelta(days=31)
# Bars go to the writer in chunks of about this many bars, each one transaction between two live
# batches, so live ticks wait for one chunk at most: a symbol's day of 24/7 minutes (1,440 bars,
# with 5,760 backfilled ticks inside the raw retention) takes about 0.25 s on 2 cores, where a day
# of 6 symbols took 1.5 s. A chunk never splits a symbol's UTC day: its wider bars are rebuilt once.
CHUNK_BARS = 1_000
# Gaps starting this close together are asked for together, from the earliest start.
GROUP_SLACK = timedelta(hours=1)
# Requests answered but not yet stored: the writer stores one answer while the next is fetched.
IN_FLIGHT = 1


# Receives each symbol's share of its planned history stored so far (0 to 1), as it grows.
ProgressFn = Callable[[dict[str, float]], None]


class CallFn(Protocol):
    """The fetcher's retrying provider call: the result, or None when the round was skipped."""

    async def __call__(self, call: str, fn: Callable[[], Awaitable[T]]) -> T | None: ...


@dataclass(frozen=True, slots=True)
class Request:
    """Minute bars of `symbols` starting in [start, end)."""

    symbols: tuple[str, ...]
    start: datetime
    end: datetime


class Backfill:
    """Fills `window` before `until` where nothing is stored yet; safe to run again."""

    def __init__(
        self,
        writer: BatchWriter,
        symbols: Sequence[str],
        window: timedelta,
        call: CallFn,
        metrics: FetcherMetrics,
        drops: DropLog,
        market: Market,
        progress: ProgressFn | None = None,
        wanted: Callable[[str], bool] | None = None,
    ) -> None:
        self.writer = writer
        self.symbols = list(symbols)
        self.window = window
        self.call = call
        self.metrics = metrics
        self.drops = drops
        self.market = market
        self.progress = progress
        self.wanted = wanted  # when given, a symbol no longer wanted is asked for no more
        # Set once the gaps are known: until then this run's first live ticks (which may carry
        # an old vendor time when the market is closed) could be mistaken for stored history.
        self.planned = asyncio.Event()
        # Clear while a backfill runs: healing waits for it rather than asking for the same bars.
        self.idle = asyncio.Event()
        self.idle.set()

    async def stored_until(self, until: datetime) -> dict[str, datetime | None]:
        """Each symbol's latest stored data before `until`, waiting out database outages."""
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
        """(symbol, first missing minute) for every symbol with a whole minute missing."""
        since = until - self.window
        end = floor_minute(until)
        result = []
        for symbol in self.symbols:
            last = stored.get(symbol)
            # the minute of the last stored tick is not missing, nor is any before it
            start = (
                ceil_minute(since)
                if last is None
                else max(ceil_minute(since), floor_minute(last) + MINUTE)
            )
            if end - start >= MINUTE:
                result.append((symbol, start))
        return result

    def plan(self, gaps: list[tuple[str, datetime]], until: datetime) -> list[Request]:
        """The requests that fill `gaps`: the last open day of every group of symbols first, then
        the rest, newest first; only time when the market is open is asked for."""
        end = floor_minute(until)
        # Gaps that start together (within GROUP_SLACK) are asked for together, from the earliest
        # start: the few minutes a symbol has already are skipped when the answer is stored.
        groups: dict[datetime, list[str]] = defaultdict(list)
        first: datetime | None = None
        for symbol, start in sorted(gaps, key=lambda g: g[1]):
            if first is None or start - first > GROUP_SLACK:
                first = start
            groups[first].append(symbol)
        recent: list[Request] = []
        older: list[Request] = []
        for start, symbols in groups.items():
            days = _days(self.market.sessions(start, end))
            if not days:
                continue
            names = tuple(symbols)
            recent.append(Request(names, *days[-1]))
            older.extend(Request(names, a, b) for a, b in _batches(days[:-1], len(names)))
        newest_first = sorted(older, key=lambda r: r.end, reverse=True)
        return sorted(recent, key=lambda r: r.end, reverse=True) + newest_first

    async def run(
        self, provider: Provider, until: datetime, turn: asyncio.Semaphore | None = None
    ) -> int:
        """Backfill every gap up to `until` (the start of live ticks); returns minutes stored.

        With `turn`, the requests wait for it once the gaps are known (one backfill at a time).
        """
        self.idle.clear()
        try:
            return await self._run(provider, until, turn)
        finally:
            self.planned.set()
            self.idle.set()

    async def _run(
        self, provider: Provider, until: datetime, turn: asyncio.Semaphore | None
    ) -> int:
        if self.window <= timedelta(0):
            return 0
        try:
            gaps = self.gaps(await self.stored_until(until), until)
        finally:
            self.planned.set()
        requests = self.plan(gaps, until)
        if turn is None:
            return await self._fill(provider, gaps, requests)
        async with turn:
            return await self._fill(provider, gaps, requests)

    async def _fill(
        self, provider: Provider, gaps: list[tuple[str, datetime]], requests: list[Request]
    ) -> int:
        pending: deque[tuple[Request, list[asyncio.Future[int]]]] = deque()
        shares = _Shares(requests, self.progress)
        total = 0
        unavailable = False
        try:
            for planned in requests:
                request = self._still_wanted(planned)
                if request is None:
                    continue
                try:
                    bars = await self.call("history", _fetch(provider, request))
                except HistoryUnavailable as exc:
                    log.info("no history backfill: %s", exc, extra={"provider": provider.name})
                    unavailable = True
                    break
                good = self.accept(bars, request, provider.name) if bars else []
                pending.append((request, [self.writer.submit_bars(c) for c in day_chunks(good)]))
                # The writer stores this answer while the next request is in flight.
                while len(pending) > IN_FLIGHT:
                    total += await shares.stored(*pending.popleft())
            while pending:
                total += await shares.stored(*pending.popleft())
        finally:
            for _, futures in pending:  # cancelled: queued chunks are not written
                for future in futures:
                    future.cancel()
        if requests and not unavailable:
            log.info(
                "history backfilled",
                extra={
                    "provider": provider.name,
                    "symbols": len(gaps),
                    "requests": len(requests),
                    "stored": total,
                    "window_h": round(self.window.total_seconds() / 3600, 1),
                },
            )
        return total

    def _still_wanted(self, request: Request) -> Request | None:
        """`request` for the symbols still wanted (None: none is)."""
        if self.wanted is None:
            return request
        symbols = tuple(s for s in request.symbols if self.wanted(s))
        if symbols == request.symbols:
            return request
        return replace(request, symbols=symbols) if symbols else None

    def accept(self, bars: list[Bar], request: Request, source: str) -> list[Bar]:
        """The good bars of `request` (see accept_bars)."""
        return accept_bars(bars, request, source, self.market, self.metrics, self.drops)


def accept_bars(
    bars: list[Bar],
    request: Request,
    source: str,
    market: Market,
    metrics: FetcherMetrics,
    drops: DropLog,
) -> list[Bar]:
    """The bars that pass validation, inside the request and the market's hours, stamped with
    their source; the rest are counted by reason."""
    metrics.bars_fetched.labels(source).inc(len(bars))
    good, dropped = split_valid_bars(bars, request.symbols, datetime.now(UTC), drops)
    asked = [b for b in good if request.start <= b.start < request.end]
    kept = open_minutes_only(asked, market)
    dropped[DropReason.NOT_ASKED] += len(good) - len(kept)
    for reason, count in dropped.items():
        if count:
            metrics.bars_dropped.labels(reason).inc(count)
    return [b if b.source == source else replace(b, source=source) for b in kept]


def open_minutes_only(bars: list[Bar], market: Market) -> list[Bar]:
    """The bars of minutes during which `market` was open (a vendor may serve extended hours)."""
    if market.always_open or not bars:
        return bars
    first = min(b.start for b in bars)
    last = max(b.start for b in bars)
    sessions = market.sessions(first, last + MINUTE)
    kept = []
    i = 0
    for bar in sorted(bars, key=lambda b: b.start):
        while i < len(sessions) and sessions[i][1] < bar.start + MINUTE:
            i += 1
        if i < len(sessions) and sessions[i][0] <= bar.start:
            kept.append(bar)
    return kept


def day_chunks(bars: Iterable[Bar], size: int = CHUNK_BARS) -> Iterator[list[Bar]]:
    """Chunks of about `size` bars, day by day, that never split a symbol's UTC day."""
    chunk: list[Bar] = []
    key = None
    for bar in sorted(bars, key=lambda b: (b.start.date(), b.symbol, b.start)):
        if len(chunk) >= size and (bar.start.date(), bar.symbol) != key:
            yield chunk
            chunk = []
        chunk.append(bar)
        key = (bar.start.date(), bar.symbol)
    if chunk:
        yield chunk


class _Shares:
    """Each symbol's share of its planned minutes whose requests are answered and stored."""

    def __init__(self, requests: list[Request], report: ProgressFn | None) -> None:
        self.report = report
        self.planned: dict[str, float] = defaultdict(float)
        self.done: dict[str, float] = defaultdict(float)
        for request in requests:
            for symbol in request.symbols:
                self.planned[symbol] += _minutes(request)

    async def stored(self, request: Request, futures: list[asyncio.Future[int]]) -> int:
        """Wait for one request's chunks, then report the shares of its symbols."""
        stored = await _stored(futures)
        if self.report is not None:
            for symbol in request.symbols:
                self.done[symbol] += _minutes(request)
            self.report({s: min(1.0, self.done[s] / self.planned[s]) for s in request.symbols})
        return stored


def _minutes(request: Request) -> float:
    return (request.end - request.start) / MINUTE


async def _stored(futures: list[asyncio.Future[int]]) -> int:
    stored = 0
    for future in futures:
        try:
            stored += await future
        except Exception:  # noqa: BLE001 - one chunk lost is no reason to stop
            log.warning("history chunk not stored")
    return stored


def _fetch(provider: Provider, request: Request) -> Callable[[], Awaitable[list[Bar]]]:
    return lambda: provider.bars(request.symbols, request.start, request.end)


def _days(sessions: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """The sessions in whole minutes, a 24/7 one cut into days ending at its end, oldest first."""
    days: list[tuple[datetime, datetime]] = []
    for opens, closes in sessions:
        first, end = ceil_minute(opens), floor_minute(closes)
        parts = []
        while end - first > DAY:
            parts.append((end - DAY, end))
            end -= DAY
        if end > first:
            parts.append((first, end))
        days.extend(reversed(parts))
    return days


def _batches(
    days: list[tuple[datetime, datetime]], symbols: int
) -> Iterator[tuple[datetime, datetime]]:
    """Runs of consecutive days, newest first, each within the request's bar and time budget."""
    end: datetime | None = None
    start: datetime | None = None
    bars = 0
    for first, last in reversed(days):
        size = symbols * int((last - first) / MINUTE)
        if (
            end is not None
            and start is not None
            and (bars + size > REQUEST_BARS or end - first > REQUEST_SPAN)
        ):
            yield start, end
            end = None
        if end is None:
            end, bars = last, 0
        start = first
        bars += size
    if end is not None and start is not None:
        yield start, end


def floor_minute(ts: datetime) -> datetime:
    """The start of the minute `ts` falls in."""
    return ts.replace(second=0, microsecond=0)


def ceil_minute(ts: datetime) -> datetime:
    """The first whole minute that starts at or after `ts`."""
    floor = floor_minute(ts)
    return floor if floor == ts else floor + MINUTE
