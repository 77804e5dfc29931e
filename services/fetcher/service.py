"""The fetcher's loops: prices every interval, metadata every few hours, one writer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import EllipsisType
from typing import Any, TypeVar

import stamina

from services.common.db import OUTAGE_ERRORS
from services.common.market import Market
from services.common.models import Profile, Tick, Week52
from services.common.retry import Backoff
from services.fetcher import feed_queries
from services.fetcher.backfill import Backfill
from services.fetcher.buffer import TickBuffer
from services.fetcher.chain import Member, ProviderChain
from services.fetcher.config import FetcherSettings
from services.fetcher.healing import Healer
from services.fetcher.hours import Hours
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.onboarding import Onboarding
from services.fetcher.providers.base import (
    Provider,
    ProviderError,
    ProviderFatal,
    SymbolLimit,
    TradeStream,
)
from services.fetcher.validation import (
    DropLog,
    DropReason,
    split_valid,
    usable_profile,
    usable_week52,
)
from services.fetcher.watchlist import Entry, WatchlistListener, beyond
from services.fetcher.writer import BatchWriter

log = logging.getLogger(__name__)
T = TypeVar("T")

METADATA_RETRY_SECONDS = 30.0
RANGE_FLUSH_SECONDS = 5.0  # how soon a broken 52-week high or low reaches the database
OUTSIDE_SESSION = "outside_session"  # a drop reason: a trade outside the market's hours
FEED_RETRY_MAX = 30.0  # the longest wait before writing the feed row again after a failure


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Fetcher:
    """Runs a chain of providers (the first healthy one serves) against one database until
    `stop()`.

    `history` is the source of past bars (default: the first of the chain that has history);
    `clock` is what market hours are judged by (default: the system clock).
    """

    def __init__(
        self,
        settings: FetcherSettings,
        provider: Provider | Sequence[Provider],
        metrics: FetcherMetrics,
        history: Provider | None | EllipsisType = ...,
        clock: Callable[[], datetime] = _utcnow,
    ):
        self.settings = settings
        self.metrics = metrics
        self.drops = DropLog()
        self._ranges: dict[str, Week52] = {}  # the 52-week range last stored, per symbol
        self._broken: dict[str, Week52] = {}  # ranges live prices extended, not yet stored
        providers = [provider] if isinstance(provider, Provider) else list(provider)
        self.chain = ProviderChain(
            providers,
            metrics,
            failover_after=settings.failover_after.total_seconds(),
            price_interval=settings.price_interval,
            on_switch=self._switched,
        )
        if isinstance(history, EllipsisType):
            history = next((p for p in providers if p.has_history), None)
        self.history_provider: Provider | None = history
        for each in [*providers, history]:
            if each is not None:
                each.attach(self._provider_dropped)
        self.market = Market(settings.calendar, settings.extended_hours)
        self.hours = Hours(self.market)
        self.clock = clock
        self.configured = list(settings.symbols)
        # The symbols tracked now (quotes, streams, metadata, healing, which ticks are valid):
        # the configured ones until the watchlist is read, then its rows as they are taken on.
        # Changed in place: the writer holds the same list.
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
        self.watchlist = WatchlistListener(
            settings.database_url_now,
            settings.fetcher_db_role,
            self.configured,
            metrics,
            self._apply,
        )
        # How a symbol joins: the vendor's verdict, limits, a backfill with progress, its states.
        self.onboarding = Onboarding(
            settings,
            self.writer,
            self.symbols,
            self.chain,
            self.history_provider,
            self._call,
            metrics,
            self.drops,
            self.market,
            take_out=self._take_out,
            track=self._track,
            untrack=self._untrack,
            changed=self._changed,
            wake=self.watchlist.wake,
        )
        self.backfill = Backfill(
            self.writer,
            self.symbols,
            settings.backfill,
            self._call,
            metrics,
            self.drops,
            self.market,
            progress=self.onboarding.progress,
            wanted=lambda symbol: symbol in self.symbols,  # one removed meanwhile is left out
        )
        # Healing looks no further back than history is wanted (none when backfill is off).
        self.healer = Healer(
            self.writer,
            self.symbols,
            self.market,
            self._call,
            metrics,
            self.drops,
            lookback=min(settings.heal_lookback, settings.backfill),
            interval=settings.heal_interval.total_seconds(),
        )
        # Live ticks wait in the buffer until the backfill has read where history ends.
        self.writer.hold = self.backfill.planned
        self._stop = asyncio.Event()
        self.exit_code = 0  # 1 once every provider of the chain is refused for good
        self._round_due = True  # one REST round at start, at the open, and after a switch
        self._open: bool | None = None  # the market, when last looked at
        self._feed_changed = asyncio.Event()
        self._feed_changed.set()  # the feed row is written at start
        self._probes: set[asyncio.Task[None]] = set()
        # -- the watchlist ------------------------------------------------------------------------
        self._first_read = asyncio.Event()  # the watchlist was read once: the start may plan
        self._fresh: set[str] = set()  # newly tracked: quoted at the next round, open or not
        self._metadata_for: set[str] = set()  # newly tracked: their names, logos and ranges
        self._metadata_due = asyncio.Event()
        self._streams_changed = asyncio.Event()
        self._streamed: dict[str, frozenset[str]] = {}  # the symbols each member's stream has
        metrics.symbols_tracked.set(len(self.symbols))

    @property
    def provider(self) -> Provider:
        """The provider serving live prices now."""
        return self.chain.active.provider

    @property
    def stream(self) -> TradeStream | None:
        """The serving provider's trade stream, when it has one."""
        return self.chain.active.stream

    @property
    def providers(self) -> list[Provider]:
        """Every provider in use: the chain, and the history source when it is not in it."""
        chain = [m.provider for m in self.chain.members]
        extra = self.history_provider
        return chain + ([extra] if extra is not None and extra not in chain else [])

    def _provider_dropped(self, kind: str, detail: str) -> None:
        self.metrics.provider_dropped.labels(kind).inc()
        self.drops.record(kind, detail)

    def stop(self) -> None:
        """Ask every loop to finish; the writer then drains the buffer."""
        self._stop.set()

    async def run(self) -> int:
        """Fetch and write until stopped; on stop, flush for at most `shutdown_timeout` s.

        Returns the exit code: 0, or 1 when every provider of the chain was refused for good.
        """
        log.info(
            "fetcher starting",
            extra={
                "provider": self.provider.name,
                "chain": ",".join(self.chain.names),
                "history": self.history_provider.name if self.history_provider else None,
                "calendar": self.market.name,
                "symbols": ",".join(self.symbols),
            },
        )
        live_from = datetime.now(UTC)
        self._start_stream(self.chain.active)
        writer = asyncio.create_task(self.writer.run(self._stop), name="writer")
        loops = [
            asyncio.create_task(self._price_loop(), name="prices"),
            asyncio.create_task(self._watch_loop(), name="failover"),
            asyncio.create_task(self._feed_loop(), name="feed"),
            asyncio.create_task(self._metadata_loop(), name="metadata"),
            asyncio.create_task(self._range_loop(), name="ranges"),
            asyncio.create_task(self._backfill(live_from), name="backfill"),
            asyncio.create_task(self.watchlist.run(), name="watchlist"),
            asyncio.create_task(self._streams_loop(), name="streams"),
        ]
        await self._stop.wait()
        # One budget for the whole shutdown: closing a trade socket may take part of it.
        clock = asyncio.get_running_loop().time
        deadline = clock() + self.settings.shutdown_timeout
        streams = [m.stream_task for m in self.chain.members if m.stream_task is not None]
        others = [*self._probes, *self.onboarding.running.values(), *self.onboarding.tasks]
        pending: set[asyncio.Task[Any]] = {*loops, *streams, *others}
        while pending:
            # Cancelled again while any is left: a library may swallow one cancellation.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        try:
            await asyncio.wait_for(writer, max(deadline - clock(), 0))
        except TimeoutError:
            log.error("shutdown: ticks not flushed in time", extra={"lost": len(self.buffer)})
        await self.writer.close()
        for provider in self.providers:
            await provider.aclose()
        log.info(
            "fetcher stopped",
            extra={
                "fetched": self._sample("ticks_fetched_total"),
                "written": self._sample("ticks_written_total"),
                "unflushed": len(self.buffer),
            },
        )
        return self.exit_code

    # -- the chain ------------------------------------------------------------------------------

    def _start_stream(self, member: Member) -> None:
        """Run `member`'s trade stream, when it has one and it is not running already."""
        if member.out or (member.stream_task is not None and not member.stream_task.done()):
            return
        if member.stream is None:
            if not self.symbols:
                return  # nothing to subscribe to
            member.stream = member.provider.trade_stream(self.symbols)
            self._streamed[member.name] = frozenset(self.symbols)
        if member.stream is not None:
            member.stream_task = asyncio.create_task(
                self._run_stream(member, member.stream), name=f"stream-{member.name}"
            )

    def _stop_stream(self, member: Member) -> None:
        if member.stream_task is not None:
            member.stream_task.cancel()
            member.stream_task = None

    async def _streams_loop(self) -> None:
        """When the symbols change, the serving provider's stream subscribes to the new set
        (the others are made afresh when they next serve)."""
        while True:
            await self._streams_changed.wait()
            self._streams_changed.clear()
            try:
                await self._restream()
            except Exception:
                log.exception("trade stream not resubscribed")

    async def _restream(self) -> None:
        wanted = frozenset(self.symbols)
        active = self.chain.active
        for member in self.chain.members:
            idle = member.stream_task is None or member.stream_task.done()
            if member is not active and idle:
                member.stream = None
        if self._streamed.get(active.name) == wanted and active.stream is not None:
            return
        task = active.stream_task
        if task is not None:
            # Wait for the old socket to close: a vendor may allow one connection only.
            task.cancel()
            await asyncio.wait([task])
            active.stream_task = None
        active.stream = None
        self._streamed.pop(active.name, None)
        if active is self.chain.active:  # no switch meanwhile (which starts its own stream)
            self._start_stream(active)
            if active.stream_task is not None:
                log.info("trade stream follows the watchlist", extra={"symbols": len(wanted)})

    async def _run_stream(self, member: Member, stream: TradeStream) -> None:

        def sink(ticks: list[Tick]) -> None:
            self._accept_live(ticks, member)

        try:
            await stream.run(sink)
        except ProviderFatal as exc:
            self._take_out(member, exc)
        except Exception:  # the stream is down; REST serves until a switch restarts it
            log.exception("trade stream ended", extra={"provider": member.name})

    def _switched(self, previous: Member, to: Member, reason: str) -> None:
        """Another provider serves: its stream runs, the old one's stops, the feed row changes."""
        self._stop_stream(previous)
        self._start_stream(to)
        self._round_due = True
        self._feed_changed.set()

    def _take_out(self, member: Member, error: ProviderError) -> None:
        """`member` refused us for good; with nobody left the fetcher stops with exit code 1."""
        self._stop_stream(member)
        self.chain.take_out(member, error)
        if self.chain.all_out and self.exit_code == 0:
            log.error(
                "every live provider refused its keys; stopping",
                extra={"chain": ",".join(self.chain.names)},
            )
            self.exit_code = 1
            self.stop()

    def _market_open(self) -> bool:
        """Whether the market is open now; at the open, silence restarts and a round is due."""
        is_open = self.hours.is_open(self.clock())
        if is_open and self._open is False:
            log.info("market open", extra={"calendar": self.market.name})
            self._round_due = True
            self.chain.market_opened()
        self._open = is_open
        self.metrics.market_open.set(int(is_open))
        return is_open

    async def _watch_loop(self) -> None:
        """Fail over when the serving provider falls silent; probe the better ones."""
        step = min(1.0, self.chain.failover_after / 4)
        while True:
            try:
                if self._market_open():
                    self.chain.check(market_open=True)
                    for member in self.chain.due_probes():
                        member.probing = True
                        task = asyncio.create_task(self._probe(member), name=f"probe-{member.name}")
                        self._probes.add(task)
                        task.add_done_callback(self._probes.discard)
            except Exception:  # a bug here must not end failover for good
                log.exception("failover check failed")
            await asyncio.sleep(step)

    async def _probe(self, member: Member) -> None:
        """One cheap quote from a better provider: fresh, good ticks mean it is healthy again."""
        ok = False
        try:
            ticks = await asyncio.wait_for(
                member.provider.quotes(self.symbols[:1]),
                self.settings.provider_timeout + self.chain.failover_after,
            )
            ok = self._accept_live(ticks, member) > 0
        except ProviderFatal as exc:
            self._take_out(member, exc)
        except (ProviderError, TimeoutError) as exc:
            log.debug("probe failed", extra={"provider": member.name, "error": str(exc)})
        except Exception:
            log.exception("probe failed", extra={"provider": member.name})
        self.chain.probed(member, ok)

    async def write_feed_once(self) -> None:
        """Store the feed row (chain, serving provider, history, calendar) and NOTIFY feed."""
        history = self.history_provider.name if self.history_provider else None
        async with self.writer.use() as store:
            await store.conn.execute(
                feed_queries.WRITE_FEED,
                self.chain.names,
                self.chain.active.name,
                history,
                self.market.name,
                self.settings.extended_hours,
            )

    async def _feed_loop(self) -> None:
        backoff = Backoff(0.2, FEED_RETRY_MAX)
        while True:
            await self._feed_changed.wait()
            self._feed_changed.clear()
            try:
                await self.write_feed_once()
                backoff.reset()
            except Exception as exc:  # noqa: BLE001 - the database may be down: try again later
                self._feed_changed.set()
                if backoff.failures == 0:
                    log.warning("feed row not stored; retrying", extra={"error": str(exc)})
                await backoff.sleep()

    def _sample(self, name: str, **labels: str) -> int:
        return int(self.metrics.total(name, **labels))

    async def _call(self, call: str, fn: Callable[[], Awaitable[T]]) -> T | None:
        """Call the provider with bounded, jittered exponential back-off; None skips the round.

        ProviderFatal (keys refused) is not retried: it is raised for the caller to act on.
        """
        s = self.settings
        try:
            async for attempt in stamina.retry_context(
                on=_retryable,
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
                        if isinstance(exc, ProviderFatal):
                            raise
                        if exc.retry_after:
                            await asyncio.sleep(min(exc.retry_after, s.retry_wait_max))
                        raise
        except ProviderFatal:
            raise
        except ProviderError as exc:
            self.metrics.rounds_skipped.labels(call).inc()
            log.warning(
                "provider failed; skipping this round",
                extra={"call": call, "kind": exc.kind, "error": str(exc)},
            )
        return None

    async def fetch_prices_once(self) -> None:
        """One round: quotes for every symbol from the serving provider, into the buffer."""
        await self._round(self.chain.active, self.symbols)

    async def _round(self, member: Member, symbols: Sequence[str]) -> None:
        """Quotes of `symbols` from `member`, validated, into the buffer."""
        try:
            ticks = await self._call("quotes", lambda: member.provider.quotes(symbols))
        except ProviderFatal as exc:
            self._take_out(member, exc)
            return
        if ticks:
            self._accept_live(ticks, member)

    def _accept(self, ticks: list[Tick]) -> list[Tick]:
        """The ticks that pass validation; the rest are counted by reason."""
        self.metrics.ticks_fetched.labels(self.provider.name).inc(len(ticks))
        return self._valid(ticks)

    def _valid(self, ticks: list[Tick]) -> list[Tick]:
        good, dropped = split_valid(ticks, self.symbols, datetime.now(UTC), self.drops)
        for reason, count in dropped.items():
            self.metrics.ticks_dropped.labels(reason).inc(count)
        return good

    def _accept_live(self, ticks: list[Tick], member: Member | None = None) -> int:
        """Stamp live ticks (from a round or a trade stream) with their provider, keep those in
        the market's session that pass validation, and queue them; returns how many."""
        member = member or self.chain.active
        source = member.name
        self.metrics.ticks_fetched.labels(source).inc(len(ticks))
        stamped = [t if t.source == source else replace(t, source=source) for t in ticks]
        inside = [t for t in stamped if self.hours.in_session(t.ts)]
        if len(inside) < len(stamped):
            outside = len(stamped) - len(inside)
            self.metrics.ticks_dropped.labels(OUTSIDE_SESSION).inc(outside)
            self.drops.record(OUTSIDE_SESSION, f"{outside} ticks from {source} outside the session")
        good = self._valid(inside)
        if not good:
            return 0
        self.chain.heard(member)
        self._extend_ranges(good)
        evicted = self.buffer.put(good)
        if evicted:
            self.metrics.ticks_dropped.labels(DropReason.BUFFER_FULL).inc(evicted)
            self.drops.record(DropReason.BUFFER_FULL, f"{evicted} oldest ticks evicted")
        self.metrics.buffer_depth.set(len(self.buffer))
        return len(good)

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
        while True:
            try:
                await self.price_round_once()
            except Exception:  # one bad round must never end the loop
                self.metrics.provider_errors.labels("unexpected").inc()
                log.exception("price round failed")
            # Fixed-rate schedule: no drift, and no burst of catch-up rounds after a stall.
            next_at = max(next_at + interval, loop.time())
            await asyncio.sleep(next_at - loop.time())

    async def price_round_once(self) -> None:
        """The REST part of one price interval, as the market and the trade stream allow.

        One round for every symbol at start, at the open and after a switch, so a price exists
        before the first trade; then, while the market is open, the symbols the stream does not
        deliver (all of them while it is down). A closed market costs no vendor calls.
        """
        is_open = self._market_open()
        member = self.chain.active
        streaming = member.streaming
        self.metrics.stream_connected.set(int(streaming))
        fresh = [s for s in self.symbols if s in self._fresh]
        self._fresh.clear()
        wanted = [s for s in self.symbols if s not in fresh]
        if streaming and member.stream is not None:
            covered = member.stream.covered
            wanted = [s for s in wanted if s not in covered]
        if not self.symbols:
            return
        if self._round_due:
            self._round_due = False
            await self._round(member, self.symbols)
            return
        if fresh:  # a price for each new symbol at once, whatever the market
            await self._round(member, fresh)
        if wanted and not is_open:
            self.metrics.rounds_saved.inc()
        elif wanted:
            await self._round(member, wanted)

    async def _backfill(self, live_from: datetime) -> None:
        """Once the watchlist is read: check the configured symbols new to it, fill history
        behind the first live tick for every tracked symbol, then heal gaps for good; failures
        are logged, never fatal."""
        source = self.history_provider
        if source is None:
            log.info("no history source: no backfill, no healing")
            self.backfill.planned.set()  # live ticks need not wait for history
            self.backfill.idle.set()
        refused = False
        try:
            await self._first_read.wait()
            starting = await self.onboarding.check_starting()
            if source is None or self.settings.backfill <= timedelta(0):
                self.backfill.planned.set()
                await self.onboarding.went_live(starting, "config")
            else:
                for symbol in starting:
                    await self.onboarding.enter_backfilling(symbol)
                self.backfill.symbols = list(self.symbols)
                try:
                    await self.backfill.run(source, live_from)
                except ProviderFatal as exc:
                    refused = True
                    log.error(
                        "history source refused: no backfill, no healing",
                        extra={"provider": source.name, "error": str(exc)},
                    )
                except Exception:
                    log.exception("history backfill failed")
                finally:
                    self.onboarding.backfilled(starting)
                await self.onboarding.went_live(starting, "config")
        finally:
            self.backfill.planned.set()  # whatever happened, live ticks must not wait for ever
        if source is not None and not refused:
            await self.healer.run(source, self.backfill)

    async def refresh_metadata_once(self, symbols: Sequence[str] | None = None) -> bool:
        """Fetch profiles and 52-week ranges (of `symbols`, default all) and upsert them; False
        if it must be retried."""
        member = self.chain.active
        provider = member.provider
        wanted = list(self.symbols if symbols is None else symbols)
        if not wanted:
            return True
        try:
            profiles = await self._call("profiles", lambda: provider.profiles(wanted))
            week52 = await self._call("week52", lambda: provider.week52(wanted))
        except ProviderFatal as exc:
            self._take_out(member, exc)
            return False
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
        loop = asyncio.get_running_loop()
        while True:
            try:
                ok = await self.refresh_metadata_once()
            except Exception:
                log.exception("metadata round failed")
                ok = False
            delay = self.settings.metadata_interval if ok else METADATA_RETRY_SECONDS
            until = loop.time() + min(delay, self.settings.metadata_interval)
            # Meanwhile, symbols newly tracked get theirs at once.
            while (left := until - loop.time()) > 0:
                with suppress(TimeoutError):
                    async with asyncio.timeout(left):  # (not wait_for: see watchlist.py)
                        await self._metadata_due.wait()
                self._metadata_due.clear()
                await self._new_metadata_once()

    async def _new_metadata_once(self) -> None:
        """Profiles and ranges of the symbols tracked since the last time; retried if need be."""
        new = [s for s in self.symbols if s in self._metadata_for]
        self._metadata_for.clear()
        if not new:
            return
        try:
            ok = await self.refresh_metadata_once(new)
        except Exception:
            log.exception("metadata of new symbols failed")
            ok = False
        if not ok:
            self._metadata_for.update(new)
            asyncio.get_running_loop().call_later(METADATA_RETRY_SECONDS, self._metadata_due.set)

    # -- the watchlist ----------------------------------------------------------------------

    def symbol_limit(self) -> SymbolLimit:
        """The most symbols tracked at once: STOCKSTREAMER_MAX_SYMBOLS, or less when a provider
        of the chain cannot serve that many."""
        n = self.settings.max_symbols
        limits = [SymbolLimit(n, f"at most {n} symbols are tracked (STOCKSTREAMER_MAX_SYMBOLS)")]
        for member in self.chain.members:
            limit = member.provider.symbol_limit()
            if limit is not None:
                limits.append(limit)
        return min(limits, key=lambda limit: limit.count)

    def _apply(self, entries: list[Entry]) -> None:
        """Follow the watchlist as just read: drop what left it, take on what came."""
        limit = self.symbol_limit()
        over = beyond(entries, limit.count)
        states = {e.symbol: e.state for e in entries}
        wanted = {e.symbol for e in entries if e.tracked} - set(over)
        onboarding = self.onboarding
        for symbol in over:
            onboarding.reject_later(symbol, limit.reason, "limit")
        onboarding.forget(wanted)
        for symbol in [s for s in self.symbols if s not in wanted]:
            removed = symbol not in over and states.get(symbol) != "rejected"
            self._untrack(symbol, purge=not removed)
            if removed:
                self.metrics.symbols_removed.inc()
                log.info(
                    "symbol removed from the watchlist; no longer fetched", extra={"symbol": symbol}
                )
        first = not self._first_read.is_set()
        now = time.monotonic()
        for entry in entries:
            symbol = entry.symbol
            if (
                symbol not in wanted
                or symbol in onboarding.running
                or symbol in onboarding.starting
            ):
                continue
            if entry.state == "live":
                if symbol not in self.symbols:
                    self._track(symbol)
            elif first and symbol in self.symbols:
                onboarding.starting.append(symbol)  # configured: checked and backfilled at start
            elif onboarding.retry_at.get(symbol, 0.0) <= now:
                onboarding.onboard_later(symbol, entry.origin)
        self._changed()
        self._first_read.set()

    def _track(self, symbol: str) -> None:
        """Fetch `symbol` from now on: quotes, the stream, metadata, valid ticks."""
        if symbol in self.symbols:
            return
        self.symbols.append(symbol)
        self._fresh.add(symbol)
        self._metadata_for.add(symbol)
        self._metadata_due.set()
        self._changed(streams=True)

    def _untrack(self, symbol: str, purge: bool) -> None:
        """Stop fetching `symbol` at once; with `purge`, its ticks not yet stored are dropped."""
        if symbol in self.symbols:
            self.symbols.remove(symbol)
        self._fresh.discard(symbol)
        self._metadata_for.discard(symbol)
        self._ranges.pop(symbol, None)
        self._broken.pop(symbol, None)
        if purge and (dropped := self.buffer.discard({symbol})):
            self.metrics.ticks_dropped.labels(DropReason.UNTRACKED).inc(dropped)
        with suppress(KeyError):
            self.metrics.newest_tick.remove(symbol)
        self._changed(streams=True)

    def _changed(self, streams: bool = False) -> None:
        """The symbol set changed: healing leaves out those still backfilling."""
        self.healer.symbols = [s for s in self.symbols if s not in self.onboarding.running]
        self.metrics.symbols_tracked.set(len(self.symbols))
        if streams:
            self._streams_changed.set()


def _retryable(exc: Exception) -> bool:
    """Provider failures are retried, except those retrying cannot mend."""
    return isinstance(exc, ProviderError) and not isinstance(exc, ProviderFatal)
