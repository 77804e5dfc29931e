"""Healing: minutes of the recent past with nothing stored are filled from the history source."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from services.common.db import OUTAGE_ERRORS
from services.common.market import Market
from services.fetcher.backfill import (
    MINUTE,
    Backfill,
    CallFn,
    Request,
    accept_bars,
    ceil_minute,
    day_chunks,
    floor_minute,
)
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.providers.base import HistoryUnavailable, Provider, ProviderFatal
from services.fetcher.validation import DropLog
from services.fetcher.writer import BatchWriter

log = logging.getLogger(__name__)

LOOKBACK = timedelta(days=1)
INTERVAL = 60.0
# A vendor publishes a minute's bar shortly after the minute ends: a minute it has no bar for yet
# is asked for again until it is this old, and only then remembered as having none.
SETTLE = timedelta(minutes=5)
# A minute's bar is final once the minute is over; vendors publish it within seconds.
PUBLISHED = timedelta(seconds=10)


@dataclass(slots=True)
class Gap:
    """Consecutive minutes [start, end) of one symbol with nothing stored."""

    symbol: str
    start: datetime
    end: datetime
    minutes: list[datetime] = field(default_factory=list)


class Healer:
    """Finds the minutes the market was open and nothing was stored, and fills them."""

    def __init__(
        self,
        writer: BatchWriter,
        symbols: Sequence[str],
        market: Market,
        call: CallFn,
        metrics: FetcherMetrics,
        drops: DropLog,
        *,
        lookback: timedelta = LOOKBACK,
        interval: float = INTERVAL,
        settle: timedelta = SETTLE,
    ) -> None:
        self.writer = writer
        self.symbols = list(symbols)
        self.market = market
        self.call = call
        self.metrics = metrics
        self.drops = drops
        self.lookback = lookback
        self.interval = interval
        self.settle = settle

    async def run(self, provider: Provider, backfill: Backfill | None = None) -> None:
        """Heal every `interval` seconds, forever; never raises. Passes wait for `backfill`:
        its first plan, and any run of it, so that the two never ask for the same bars."""
        if self.lookback <= timedelta(0):
            return  # no history wanted
        if backfill is not None:
            await backfill.planned.wait()
        down = False
        while True:
            if backfill is not None:
                await backfill.idle.wait()
            try:
                await self.heal_once(provider, datetime.now(UTC))
                down = False
            except HistoryUnavailable as exc:
                log.info("no healing: %s", exc, extra={"provider": provider.name})
                return
            except ProviderFatal as exc:  # keys refused: asking again every minute cannot help
                self.metrics.heal_passes.labels("failed").inc()
                log.error(
                    "healing stopped: the history source refused us",
                    extra={"provider": provider.name, "kind": exc.kind, "error": str(exc)},
                )
                return
            except OUTAGE_ERRORS as exc:
                self.metrics.heal_passes.labels("database_down").inc()
                if not down:  # once per outage; the pass is tried again next interval
                    log.warning("healing waits for the database", extra={"error": str(exc)})
                down = True
            except Exception:
                self.metrics.heal_passes.labels("failed").inc()
                log.exception("healing pass failed")
            await asyncio.sleep(self.interval)

    async def heal_once(self, provider: Provider, now: datetime) -> int:
        """One pass: find the gaps of the last `lookback`, ask for them, store what comes;
        returns the minutes filled."""
        started = time.perf_counter()
        since = now - self.lookback
        periods = _periods(self.market.sessions(since, now - PUBLISHED))
        async with self.writer.use() as store:
            await store.forget_misses(since)
            missing = await store.missing_minutes(self.symbols, periods) if periods else []
        gaps = _gaps(missing)
        self.metrics.heal_gaps.inc(len(gaps))
        filled = 0
        for request, members in _requests(gaps):
            filled += await self._heal(provider, request, members, now)
        self.metrics.heal_passes.labels("ok").inc()
        self.metrics.heal_pass_seconds.observe(time.perf_counter() - started)
        return filled

    async def _heal(
        self, provider: Provider, request: Request, gaps: list[Gap], now: datetime
    ) -> int:
        """Ask for one request's bars, store them, remember the minutes that had none."""
        bars = await self.call(
            "heal", lambda: provider.bars(request.symbols, request.start, request.end)
        )
        if bars is None:
            return 0  # the source failed: asked again next pass
        good = accept_bars(bars, request, provider.name, self.market, self.metrics, self.drops)
        futures = [self.writer.submit_bars(chunk) for chunk in day_chunks(good)]
        for future in futures:
            await future
        served = {(b.symbol, b.start) for b in good}
        filled = 0
        misses: list[tuple[str, datetime]] = []
        settled = now - self.settle
        for gap in gaps:
            got = sum(1 for m in gap.minutes if (gap.symbol, m) in served)
            filled += got
            misses.extend(
                (gap.symbol, m)
                for m in gap.minutes
                if (gap.symbol, m) not in served and m + MINUTE <= settled
            )
            if got:
                log.info(
                    "gap healed",
                    extra={
                        "symbol": gap.symbol,
                        "from": gap.start.isoformat(),
                        "to": gap.end.isoformat(),
                        "minutes": len(gap.minutes),
                        "filled": got,
                        "source": provider.name,
                    },
                )
        self.metrics.heal_minutes_filled.inc(filled)
        if misses:
            self.metrics.heal_minutes_unavailable.inc(len(misses))
            async with self.writer.use() as store:
                await store.record_misses(misses, provider.name)
        return filled


def _periods(sessions: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """The sessions as whole minutes [first, stop): a minute counts only if it is wholly inside."""
    periods = []
    for opens, closes in sessions:
        first, stop = ceil_minute(opens), floor_minute(closes)
        if stop > first:
            periods.append((first, stop))
    return periods


def _gaps(missing: list[tuple[str, datetime]]) -> list[Gap]:
    """Missing (symbol, minute) pairs, ordered, as runs of consecutive minutes per symbol."""
    gaps: list[Gap] = []
    for symbol, minute in missing:
        last = gaps[-1] if gaps else None
        if last is not None and last.symbol == symbol and last.end == minute:
            last.end = minute + MINUTE
            last.minutes.append(minute)
        else:
            gaps.append(Gap(symbol, minute, minute + MINUTE, [minute]))
    return gaps


def _requests(gaps: list[Gap]) -> list[tuple[Request, list[Gap]]]:
    """Overlapping gaps of any symbols asked for together: one request per run of overlaps."""
    merged: list[tuple[Request, list[Gap]]] = []
    for gap in sorted(gaps, key=lambda g: (g.start, g.end)):
        if merged and gap.start < merged[-1][0].end:
            request, members = merged[-1]
            symbols = request.symbols
            if gap.symbol not in symbols:
                symbols = (*symbols, gap.symbol)
            merged[-1] = (Request(symbols, request.start, max(request.end, gap.end)), members)
            members.append(gap)
        else:
            merged.append((Request((gap.symbol,), gap.start, gap.end), [gap]))
    return merged
