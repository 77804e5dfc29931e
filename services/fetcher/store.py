"""The writer's work on its connection: ticks and vendor bars, with their bars; partitions."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from services.common.bars import DAILY, LEVELS, MINUTE, MONTHLY
from services.common.contract import HistoryPayload
from services.common.models import Bar, Profile, Tick, Week52
from services.fetcher import queries
from services.fetcher.rollup import columns, placed, rollup

log = logging.getLogger(__name__)

COPY_COLUMNS = ("symbol", "ts", "price", "volume", "source")
WIDER = [level.seconds for level in LEVELS[1:]]
# Minute bars are the finest level kept for history older than raw ticks; each wider level is
# rebuilt from the widest finer one whose bars nest in its own (5 minutes from 1, not from 2).
REBUILT = [
    (wide.seconds, max(f.seconds for f in LEVELS[1:i] if wide.seconds % f.seconds == 0))
    for i, wide in enumerate(LEVELS[2:], start=2)
]
LOCK_TIMEOUT = "2s"  # partition DDL waits this long for readers, then the write is retried
NEVER = datetime.min.replace(tzinfo=UTC)
SECONDS = [timedelta(seconds=s) for s in range(60)]


@dataclass(slots=True)
class Written:
    """What one write stored."""

    inserted: int = 0  # raw ticks newly stored
    as_bars: int = 0  # ticks older than the raw retention, newly stored as minute bars only
    max_event_id: int | None = None
    per_symbol: Counter[str] = field(default_factory=Counter)  # raw ticks newly stored
    newest: dict[str, datetime] = field(default_factory=dict)  # the newest raw tick stored
    first_ts: datetime | None = None
    last_ts: datetime | None = None
    expired: int = 0  # older than every retention: not stored

    @property
    def stored(self) -> int:
        return self.inserted + self.as_bars

    @property
    def symbols(self) -> set[str]:
        return set(self.per_symbol) | self._bar_symbols

    _bar_symbols: set[str] = field(default_factory=set)

    def add(
        self, symbol: str, count: int, first: datetime, last: datetime, raw: bool = True
    ) -> None:
        """`count` new ticks of `symbol` from `first` to `last` (raw, or as minute bars)."""
        if not count:
            return
        if raw:
            self.inserted += count
            self.per_symbol[symbol] += count
            self.newest[symbol] = max(last, self.newest.get(symbol, last))
        else:
            self.as_bars += count
            self._bar_symbols.add(symbol)
        self.first_ts = first if self.first_ts is None else min(self.first_ts, first)
        self.last_ts = last if self.last_ts is None else max(self.last_ts, last)

    def history_payload(self) -> str:
        """The `history` notification: which symbols and window to reload."""
        assert self.first_ts is not None and self.last_ts is not None  # noqa: S101
        return _history_payload(self.symbols, self.first_ts, self.last_ts)


@dataclass(slots=True)
class BarsWritten:
    """What one write of vendor minute bars stored."""

    bars: int = 0  # minute bars newly stored
    ticks: int = 0  # backfilled ticks they were drawn with, inside the raw retention
    expired: int = 0  # older than the minute retention: not stored
    symbols: set[str] = field(default_factory=set)
    first_ts: datetime | None = None  # the first new minute's start
    last_ts: datetime | None = None  # the last new minute's close

    def history_payload(self) -> str:
        """The `history` notification: which symbols and window to reload."""
        assert self.first_ts is not None and self.last_ts is not None  # noqa: S101
        return _history_payload(self.symbols, self.first_ts, self.last_ts)

    def plus(self, other: BarsWritten) -> BarsWritten:
        """What two writes stored together (each announced its own window)."""
        return BarsWritten(
            self.bars + other.bars,
            self.ticks + other.ticks,
            self.expired + other.expired,
            self.symbols | other.symbols,
        )


class TickStore:
    """Writes through one connection; build one with `open` for each new connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.raw_cutoff = NEVER  # older ticks are kept as minute bars only
        self.minute_cutoff = NEVER  # older ticks are not kept at all
        self._newest: dict[str, datetime] = {}
        self._sources: dict[str, str | None] = {}  # the source of each symbol's newest tick
        self._partitions: set[tuple[str, date]] = set()

    @classmethod
    async def open(cls, conn: asyncpg.Connection, symbols: list[str]) -> TickStore:
        """Ready to write: tracked stocks exist, retention applied, today's partitions made."""
        store = cls(conn)
        # Ticks reference stocks; make sure every tracked symbol has its row.
        await conn.execute(queries.ENSURE_STOCKS, symbols)
        await store.upkeep()
        rows = await conn.fetch(queries.NEWEST_TICKS, symbols)
        store._newest = {r["symbol"]: r["newest"] for r in rows if r["newest"] is not None}
        store._sources = {r["symbol"]: r["source"] for r in rows}
        return store

    # -- upkeep ------------------------------------------------------------------------------
    async def upkeep(self) -> list[str]:
        """Drop expired partitions, then make sure today's and tomorrow's exist.

        How long data is kept is the database owner's to set (partition_policy), never ours.
        """
        rows = await self.conn.fetch(queries.APPLY_RETENTION)
        dropped = [r["dropped"] for r in rows]
        if dropped:
            self._partitions.clear()
            log.info("retention: partitions dropped", extra={"dropped": ",".join(dropped)})
        cutoffs = {r["parent"]: r["cutoff"] for r in await self.conn.fetch(queries.CUTOFFS)}
        self.raw_cutoff = cutoffs.get("ticks", NEVER)
        self.minute_cutoff = cutoffs.get(MINUTE.table, NEVER)
        now = datetime.now(UTC)
        await self._ensure(now, now + timedelta(days=1), DAILY + MONTHLY)
        return dropped

    async def _ensure(self, first: datetime, last: datetime, parents: tuple[str, ...]) -> None:
        """Partitions of `parents` for every day (or month) from `first` to `last`."""
        missing = [
            (parent, start)
            for parent in parents
            for start in _periods(first, last, monthly=parent in MONTHLY)
            if (parent, start) not in self._partitions
        ]
        if missing:
            await create_partitions(self.conn, missing)
            self._partitions.update(missing)

    # -- writes ------------------------------------------------------------------------------
    async def write_live(self, ticks: list[Tick]) -> Written:
        """Store live ticks and their bars in one transaction; NOTIFY `prices` on commit."""
        return await self._write(ticks, backfilled=False)

    async def write_history(self, ticks: list[Tick]) -> Written:
        """Store past ticks (marked backfilled) and their bars; NOTIFY `history` on commit."""
        return await self._write(ticks, backfilled=True)

    async def _write(self, ticks: list[Tick], backfilled: bool) -> Written:
        written, raw = await self._prepare(ticks)
        sources = {} if backfilled else self._source_changes(ticks)
        async with self.conn.transaction():
            if raw:
                await self._write_raw(raw, written, backfilled)
            await self._write_minutes(ticks, written)
            if backfilled and written.stored:
                # History is announced as a window to reload, never as live `prices`.
                await self.conn.execute(queries.NOTIFY, "history", written.history_payload())
            elif not backfilled and written.max_event_id is not None:
                # Delivered on commit, with the highest id the readers may now fetch up to.
                await self.conn.execute(queries.NOTIFY, "prices", str(written.max_event_id))
            for symbol in sorted(sources):
                # Its live feed moved to another provider (a failover, or back): the API pushes
                # the stock again so that viewers see where its prices now come from.
                await self.conn.execute(queries.NOTIFY, "stocks", symbol)
        self._advance(raw)
        self._sources.update(sources)
        return written

    def _source_changes(self, ticks: list[Tick]) -> dict[str, str | None]:
        """The symbols whose newest live tick here has another source than the one before."""
        newest: dict[str, Tick] = {}
        for tick in ticks:
            seen = newest.get(tick.symbol)
            if seen is None or tick.ts >= seen.ts:
                newest[tick.symbol] = tick
        return {
            symbol: tick.source
            for symbol, tick in newest.items()
            if self._sources.get(symbol) != tick.source
        }

    async def _prepare(self, ticks: list[Tick]) -> tuple[Written, list[Tick]]:
        """The ticks kept raw (their partitions made); the rest are counted as expired."""
        written = Written()
        raw = [t for t in ticks if t.ts >= self.raw_cutoff]
        written.expired = sum(1 for t in ticks if t.ts < self.minute_cutoff)
        if raw:
            await self._ensure(min(t.ts for t in raw), max(t.ts for t in raw), DAILY + MONTHLY)
        if len(raw) + written.expired < len(ticks):
            old = [t.ts for t in ticks if self.minute_cutoff <= t.ts < self.raw_cutoff]
            await self._ensure(min(old), max(old), MONTHLY)
        return written, raw

    async def _write_raw(self, ticks: list[Tick], written: Written, backfilled: bool) -> None:
        if not backfilled and self._copyable(ticks):
            try:
                async with self.conn.transaction():  # a savepoint: the slower way can follow
                    await self._copy(ticks, written)
                return
            except asyncpg.UniqueViolationError:
                pass  # stored by someone else meanwhile: let ON CONFLICT sort it out
        rows = await self.conn.fetch(
            queries.WRITE_TICKS, *_columns(ticks), backfilled, WIDER, [t.source for t in ticks]
        )
        for row in rows:
            written.add(row["symbol"], row["inserted"], row["first_ts"], row["last_ts"])
        written.max_event_id = max((r["max_event_id"] for r in rows), default=None)

    async def _copy(self, ticks: list[Tick], written: Written) -> None:
        """The fast way for ticks later than anything stored: COPY, and bars made in memory."""
        records = [(t.symbol, t.ts, float(t.price), t.volume, t.source) for t in ticks]
        await self.conn.copy_records_to_table("ticks", records=records, columns=COPY_COLUMNS)
        written.max_event_id = await self.conn.fetchval(queries.LAST_EVENT_ID)
        bars = rollup((r[0], r[1], r[2]) for r in records)
        await self.conn.execute(queries.ACCUMULATE_BARS, *columns(bars))
        counts: Counter[str] = Counter()
        first: dict[str, datetime] = {}
        last: dict[str, datetime] = {}
        for symbol, ts, *_ in records:
            counts[symbol] += 1
            first[symbol] = min(ts, first.get(symbol, ts))
            last[symbol] = max(ts, last.get(symbol, ts))
        for symbol, count in counts.items():
            written.add(symbol, count, first[symbol], last[symbol])

    def _copyable(self, ticks: list[Tick]) -> bool:
        """Whether each tick is later than its symbol's newest stored one (so none can conflict)."""
        newest = dict(self._newest)
        for tick in ticks:
            last = newest.get(tick.symbol)
            if last is not None and tick.ts <= last:
                return False
            newest[tick.symbol] = tick.ts
        return True

    def _advance(self, ticks: list[Tick]) -> None:
        """Remember each symbol's newest stored tick, once the transaction has committed."""
        for tick in ticks:
            last = self._newest.get(tick.symbol)
            if last is None or tick.ts > last:
                self._newest[tick.symbol] = tick.ts

    async def write_bars(self, bars: list[Bar]) -> BarsWritten:
        """Store vendor minute bars (each minute once) in one transaction; NOTIFY `history`.

        Inside the raw retention each bar is also drawn as up to four backfilled ticks (see
        rollup.placed) with their 10 s bars; older ones are kept as minute bars only. Wider
        levels are rebuilt from the minute bars.
        """
        written = BarsWritten()
        kept = [b for b in bars if b.start >= self.minute_cutoff]
        written.expired = len(bars) - len(kept)
        if not kept:
            return written
        await self._ensure(min(b.start for b in kept), max(b.start for b in kept), MONTHLY)
        raw = [b.start for b in kept if b.start >= self.raw_cutoff]
        if raw:
            await self._ensure(min(raw), max(raw), DAILY)
        async with self.conn.transaction():
            rows = await self.conn.fetch(queries.WRITE_BARS, *_bar_columns(kept, self.raw_cutoff))
            new = [r for r in rows if r["bars"]]
            written.ticks = sum(r["ticks"] for r in rows)
            if not new:
                return written
            written.bars = sum(r["bars"] for r in new)
            written.symbols = {r["symbol"] for r in new}
            written.first_ts = min(r["first"] for r in new)
            written.last_ts = max(r["last"] for r in new) + SECONDS[59]
            changed = sorted(written.symbols)
            first, last = written.first_ts, max(r["last"] for r in new)
            for width, finer in REBUILT:
                await self.conn.execute(queries.REBUILD_BARS, width, finer, changed, first, last)
            await self.conn.execute(queries.NOTIFY, "history", written.history_payload())
        return written

    async def upsert_metadata(self, profiles: list[Profile], week52: list[Week52]) -> None:
        """Names, logos and 52-week ranges; NOTIFY `stocks` for each symbol whose values changed."""
        changed: set[str] = set()
        async with self.conn.transaction():
            if profiles:
                rows = await self.conn.fetch(
                    queries.UPSERT_PROFILES,
                    [p.symbol for p in profiles],
                    [p.name for p in profiles],
                    [p.logo_url for p in profiles],
                )
                changed.update(r["symbol"] for r in rows)
            if week52:
                rows = await self.conn.fetch(
                    queries.UPSERT_WEEK52,
                    [w.symbol for w in week52],
                    [w.high for w in week52],
                    [w.low for w in week52],
                    [w.previous_close for w in week52],
                )
                changed.update(r["symbol"] for r in rows)
            for symbol in sorted(changed):
                await self.conn.execute(queries.NOTIFY, "stocks", symbol)

    async def stored_until(self, symbols: list[str], until: datetime) -> dict[str, datetime | None]:
        """Each symbol's latest stored tick before `until`."""
        rows = await self.conn.fetch(queries.LAST_TICK_BEFORE, symbols, until)
        return {r["symbol"]: r["last_ts"] for r in rows}

    async def missing_minutes(
        self, symbols: list[str], periods: list[tuple[datetime, datetime]]
    ) -> list[tuple[str, datetime]]:
        """(symbol, minute) of every minute in `periods` (whole minutes, [first, stop)) with
        nothing stored and not known to be missing at the history source, in order."""
        rows = await self.conn.fetch(
            queries.MISSING_MINUTES, symbols, [a for a, _ in periods], [b for _, b in periods]
        )
        return [(r["symbol"], r["minute"]) for r in rows]

    async def record_misses(self, misses: list[tuple[str, datetime]], source: str) -> None:
        """Minutes the history source had no bar for, so that they are not asked for again."""
        await self.conn.execute(
            queries.RECORD_MISSES, [s for s, _ in misses], [m for _, m in misses], source
        )

    async def forget_misses(self, before: datetime) -> None:
        """Drop the misses of minutes before `before` (healing no longer looks there)."""
        await self.conn.execute(queries.FORGET_MISSES, before)

    async def _write_minutes(self, ticks: list[Tick], written: Written) -> None:
        """Ticks older than the raw retention, as minute bars; wider levels rebuilt from them."""
        old = [t for t in ticks if self.minute_cutoff <= t.ts < self.raw_cutoff]
        if not old:
            return
        symbols, times, prices, _ = _columns(old)
        rows = await self.conn.fetch(
            queries.INSERT_MINUTE_BARS, symbols, times, prices, MINUTE.seconds
        )
        if not rows:
            return
        changed = sorted({r["symbol"] for r in rows})
        first, last = min(r["bucket"] for r in rows), max(r["bucket"] for r in rows)
        for width, finer in REBUILT:
            await self.conn.execute(queries.REBUILD_BARS, width, finer, changed, first, last)
        for symbol in changed:
            count = sum(r["ticks"] for r in rows if r["symbol"] == symbol)
            written.add(symbol, count, min(times), max(times), raw=False)


async def create_partitions(conn: asyncpg.Connection, partitions: list[tuple[str, date]]) -> None:
    """Make sure each (table, first day) partition exists, in one short transaction."""
    async with conn.transaction():
        # Creating a partition locks its parent: wait briefly for readers, never for long.
        await conn.execute("SELECT set_config('lock_timeout', $1, true)", LOCK_TIMEOUT)
        for parent, start in partitions:
            at = datetime(start.year, start.month, start.day, tzinfo=UTC)
            await conn.fetchval(queries.ENSURE_PARTITION, parent, at)


def partitions_for(first: datetime, last: datetime) -> list[tuple[str, date]]:
    """Every partition that ticks from `first` to `last`, and their bars, are stored in."""
    return [
        (parent, start)
        for parent in DAILY + MONTHLY
        for start in _periods(first, last, monthly=parent in MONTHLY)
    ]


def _columns(
    ticks: list[Tick],
) -> tuple[list[str], list[datetime], list[float], list[int | None]]:
    """The ticks as the column arrays the statements unnest."""
    return (
        [t.symbol for t in ticks],
        [t.ts for t in ticks],
        [float(t.price) for t in ticks],
        [t.volume for t in ticks],
    )


def _bar_columns(bars: list[Bar], raw_cutoff: datetime) -> list[list[Any]]:
    """The bars, and the ticks drawn for those inside the raw retention, as WRITE_BARS unnests."""
    cols: list[list[Any]] = [[] for _ in range(17)]
    (symbol, start, open_, high, low, close, count, open_ts, high_ts, low_ts, close_ts, volume) = (
        cols[:12]
    )
    t_symbol, t_ts, t_price, t_volume, t_source = cols[12:]
    for bar in bars:
        o, h, lo, c = float(bar.open), float(bar.high), float(bar.low), float(bar.close)
        points = placed(o, h, lo, c)
        at = bar.start
        symbol.append(bar.symbol)
        start.append(at)
        open_.append(o)
        high.append(h)
        low.append(lo)
        close.append(c)
        count.append(len(points))
        open_ts.append(at)
        # the earliest time at the high and at the low, as a bar of these ticks has them
        high_ts.append(at + SECONDS[next(s for s, p in points if p == h)])
        low_ts.append(at + SECONDS[next(s for s, p in points if p == lo)])
        close_ts.append(at + SECONDS[points[-1][0]])
        volume.append(bar.volume)
        if at >= raw_cutoff:
            for n, (second, price) in enumerate(points, 1):
                t_symbol.append(bar.symbol)
                t_ts.append(at + SECONDS[second])
                t_price.append(price)
                t_volume.append(bar.volume if n == len(points) else None)  # the minute's volume
                t_source.append(bar.source)
    return cols


def _history_payload(symbols: set[str], first: datetime, last: datetime) -> str:
    return HistoryPayload(
        symbols=sorted(symbols), start=_ms(first), end=_ms(last)
    ).model_dump_json()


def _periods(first: datetime, last: datetime, monthly: bool) -> list[date]:
    """The first day of every UTC day (or month) from `first` to `last`."""
    day, end = first.astimezone(UTC).date(), last.astimezone(UTC).date()
    if monthly:
        day, end = day.replace(day=1), end.replace(day=1)
    periods = []
    while day <= end:
        periods.append(day)
        day = (day + timedelta(days=32)).replace(day=1) if monthly else day + timedelta(days=1)
    return periods


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)
