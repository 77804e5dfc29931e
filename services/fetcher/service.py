"""The fetcher's loops: prices every interval, metadata every few hours, one writer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import stamina

from services.common.db import OUTAGE_ERRORS
from services.common.market import ALWAYS, Market
from services.common.models import Profile, Tick, Week52
from services.fetcher.backfill import Backfill
from services.fetcher.buffer import TickBuffer
from services.fetcher.config import FetcherSettings
from services.fetcher.healing import LOOKBACK, Healer
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.providers.base import Provider, ProviderError, TradeStream
from services.fetcher.validation import (
    DropLog,
    DropReason,
    split_valid,
    usable_profile,
    usable_week52,
)
from services.fetcher.writer import BatchWriter

log = logging.getLogger(__name__)
T = TypeVar("T")

METADATA_RETRY_SECONDS = 30.0
RANGE_FLUSH_SECONDS = 5.0  # how soon a broken 52-week high or low reaches the database


class Fetcher:
    """Runs one provider against one database until `stop()`."""

    def __init__(self, settings: FetcherSettings, provider: Provider, metrics: FetcherMetrics):
        self.settings = settings
        self.metrics = metrics
        self.drops = DropLog()
        self._ranges: dict[str, Week52] = {}  # the 52-week range last stored, per symbol
        self._broken: dict[str, Week52] = {}  # ranges live prices extended, not yet stored
        self.provider = provider
        self.symbols = list(settings.symbols)
        self.buffer = TickBuffer(settings.buffer_capacity)
        metrics.buffer_capacity.set(settings.buffer_capacity)
        metrics.watch_disk(settings.fetcher_disk_path)
        self.writer = BatchWriter(
            settings.database_url_now,
            self.symbols,
            self.buffer,
            metrics,
            settings.batch_size,
            settings.fetcher_db_role,
        )
        self.market = Market(ALWAYS if provider.name == "simulated" else "XNYS")
        self.backfill = Backfill(
            self.writer,
            self.symbols,
            settings.backfill,
            self._call,
            metrics,
            self.drops,
            self.market,
        )
        # Healing looks no further back than history is wanted (none when backfill is off).
        self.healer = Healer(
            self.writer,
            self.symbols,
            self.market,
            self._call,
            metrics,
            self.drops,
            lookback=min(LOOKBACK, settings.backfill),
        )
        # Live ticks wait in the buffer until the backfill has read where history ends.
        self.writer.hold = self.backfill.planned
        self.stream: TradeStream | None = None
        self._stop = asyncio.Event()

    @property
    def provider(self) -> Provider:
        return self._provider

    @provider.setter
    def provider(self, provider: Provider) -> None:
        self._provider = provider
        provider.attach(self._provider_dropped)

    def _provider_dropped(self, kind: str, detail: str) -> None:
        self.metrics.provider_dropped.labels(kind).inc()
        self.drops.record(kind, detail)

    def stop(self) -> None:
        """Ask every loop to finish; the writer then drains the buffer."""
        self._stop.set()

    async def run(self) -> None:
        """Fetch and write until stopped; on stop, flush for at most `shutdown_timeout` s."""
        log.info(
            "fetcher starting",
            extra={"provider": self.provider.name, "symbols": ",".join(self.symbols)},
        )
        live_from = datetime.now(UTC)
        self.stream = self.provider.trade_stream(self.symbols)
        writer = asyncio.create_task(self.writer.run(self._stop), name="writer")
        loops = [
            asyncio.create_task(self._price_loop(), name="prices"),
            asyncio.create_task(self._metadata_loop(), name="metadata"),
            asyncio.create_task(self._range_loop(), name="ranges"),
            asyncio.create_task(self._backfill(live_from), name="backfill"),
        ]
        if self.stream is not None:
            loops.append(asyncio.create_task(self.stream.run(self._accept_live), name="stream"))
        await self._stop.wait()
        # One budget for the whole shutdown: closing a trade socket may take part of it.
        clock = asyncio.get_running_loop().time
        deadline = clock() + self.settings.shutdown_timeout
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        try:
            await asyncio.wait_for(writer, max(deadline - clock(), 0))
        except TimeoutError:
            log.error("shutdown: ticks not flushed in time", extra={"lost": len(self.buffer)})
        await self.writer.close()
        await self.provider.aclose()
        log.info(
            "fetcher stopped",
            extra={
                "fetched": self._sample("ticks_fetched_total", provider=self.provider.name),
                "written": self._sample("ticks_written_total"),
                "unflushed": len(self.buffer),
            },
        )

    def _sample(self, name: str, **labels: str) -> int:
        return int(self.metrics.total(name, **labels))

    async def _call(self, call: str, fn: Callable[[], Awaitable[T]]) -> T | None:
        """Call the provider with bounded, jittered exponential back-off; None skips the round."""
        s = self.settings
        try:
            async for attempt in stamina.retry_context(
                on=ProviderError,
                attempts=s.retry_attempts,
                timeout=None,
                wait_initial=s.retry_wait_initial,
                wait_max=s.retry_wait_max,
            ):
                with attempt:
                    self.metrics.provider_requests.labels(call).inc()
                    try:
                        return await fn()
                    except ProviderError as exc:
                        self.metrics.provider_errors.labels(exc.kind).inc()
                        if exc.retry_after:
                            await asyncio.sleep(min(exc.retry_after, s.retry_wait_max))
                        raise
        except ProviderError as exc:
            self.metrics.rounds_skipped.labels(call).inc()
            log.warning(
                "provider failed; skipping this round",
                extra={"call": call, "kind": exc.kind, "error": str(exc)},
            )
        return None

    async def fetch_prices_once(self) -> None:
        """One round: quotes for every symbol, validated, into the buffer."""
        ticks = await self._call("quotes", lambda: self.provider.quotes(self.symbols))
        if ticks is None:
            return
        self._accept_live(ticks)

    def _accept(self, ticks: list[Tick]) -> list[Tick]:
        """The ticks that pass validation; the rest are counted by reason."""
        self.metrics.ticks_fetched.labels(self.provider.name).inc(len(ticks))
        good, dropped = split_valid(ticks, self.symbols, datetime.now(UTC), self.drops)
        for reason, count in dropped.items():
            self.metrics.ticks_dropped.labels(reason).inc(count)
        return good

    def _accept_live(self, ticks: list[Tick]) -> None:
        """Validate ticks (from a round or the trade stream) and queue them for the writer."""
        good = self._accept(ticks)
        self._extend_ranges(good)
        evicted = self.buffer.put(good)
        if evicted:
            self.metrics.ticks_dropped.labels(DropReason.BUFFER_FULL).inc(evicted)
            self.drops.record(DropReason.BUFFER_FULL, f"{evicted} oldest ticks evicted")
        self.metrics.buffer_depth.set(len(self.buffer))

    def _extend_ranges(self, ticks: list[Tick]) -> None:
        """A live price outside the stored 52-week range is its new high or low."""
        for tick in ticks:
            known = self._ranges.get(tick.symbol)
            if known is not None and not known.low <= tick.price <= known.high:
                known = Week52(tick.symbol, max(known.high, tick.price), min(known.low, tick.price))
                self._ranges[tick.symbol] = self._broken[tick.symbol] = known

    async def flush_ranges_once(self) -> None:
        """Store the 52-week ranges live prices broke through (announced as `stocks` changes)."""
        if not self._broken:
            return
        pending, self._broken = self._broken, {}
        try:
            await self._store_metadata([], list(pending.values()))
        except OUTAGE_ERRORS:
            self._broken = {**pending, **self._broken}  # kept for the next try

    async def _range_loop(self) -> None:
        while True:
            await asyncio.sleep(RANGE_FLUSH_SECONDS)
            try:
                await self.flush_ranges_once()
            except Exception:
                log.exception("52-week range update failed")

    async def _price_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.price_interval
        next_at = loop.time()
        first = True
        while True:
            streaming = self.stream is not None and self.stream.connected
            self.metrics.stream_connected.set(int(streaming))
            self.metrics.market_open.set(int(self.provider.market_open(datetime.now(UTC))))
            try:
                # One REST round at start so a price exists before the first trade; after
                # that, REST is polled only while the trade stream is down.
                if first or not streaming:
                    await self.fetch_prices_once()
                first = False
            except Exception:  # one bad round must never end the loop
                self.metrics.provider_errors.labels("unexpected").inc()
                log.exception("price round failed")
            # Fixed-rate schedule: no drift, and no burst of catch-up rounds after a stall.
            next_at = max(next_at + interval, loop.time())
            await asyncio.sleep(next_at - loop.time())

    async def _backfill(self, live_from: datetime) -> None:
        """Fill history behind the first live tick, then heal gaps for good; failures are
        logged, never fatal."""
        try:
            await self.backfill.run(self.provider, live_from)
        except Exception:
            log.exception("history backfill failed")
        await self.healer.run(self.provider, self.backfill)

    async def refresh_metadata_once(self) -> bool:
        """Fetch profiles and 52-week ranges and upsert them; False if it must be retried."""
        profiles = await self._call("profiles", lambda: self.provider.profiles(self.symbols))
        week52 = await self._call("week52", lambda: self.provider.week52(self.symbols))
        try:
            await self._store_metadata(profiles or [], week52 or [])
        except OUTAGE_ERRORS as exc:
            log.warning("metadata not stored: database unreachable", extra={"error": str(exc)})
            return False
        return profiles is not None and week52 is not None

    async def _store_metadata(self, profiles: Sequence[Profile], week52: Sequence[Week52]) -> None:
        tracked = set(self.symbols)
        checked = [(p, usable_profile(p)) for p in profiles if p.symbol in tracked]
        for profile, kept_profile in checked:
            if kept_profile is not profile:  # a logo not over https: nor data:image/, a silly name
                self._provider_dropped("invalid_fields", f"profile {profile.symbol}")
        profiles = [kept for _, kept in checked if kept is not None]
        usable = [(w, usable_week52(w)) for w in week52 if w.symbol in tracked]
        for given, kept in usable:
            if kept is not given:  # left out, or kept without its previous close
                self._provider_dropped("invalid_fields", f"52-week range {given}")
        week52 = [kept for _, kept in usable if kept is not None]
        if not profiles and not week52:
            return
        async with self.writer.use() as store:
            await store.upsert_metadata(profiles, week52)
        self._ranges.update((w.symbol, w) for w in week52)

    async def _metadata_loop(self) -> None:
        while True:
            try:
                ok = await self.refresh_metadata_once()
            except Exception:
                log.exception("metadata round failed")
                ok = False
            delay = self.settings.metadata_interval if ok else METADATA_RETRY_SECONDS
            await asyncio.sleep(min(delay, self.settings.metadata_interval))
