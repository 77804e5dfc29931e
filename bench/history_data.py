"""A history data set for the benchmarks: raw 1 s ticks loaded with COPY, bars for a year."""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.processes import track
from services.common.bars import LEVELS
from services.common.retention import set_retention
from services.fetcher import queries
from services.fetcher.store import REBUILT, create_partitions, partitions_for


@dataclass(frozen=True)
class Scale:
    """How much history the benchmark stores."""

    name: str
    symbols: int
    raw_days: int  # 1 s ticks, raw
    minute_days: int  # one-minute bars (and wider) back this far
    years: int = 1  # hourly bars (and wider) back this far

    @property
    def raw_rows(self) -> int:
        return self.symbols * self.raw_days * 86_400


SCALES = {
    "default": Scale("default", symbols=50, raw_days=2, minute_days=30),
    "full": Scale("full", symbols=50, raw_days=30, minute_days=365),
}
SYMBOLS = [f"S{i:02d}" for i in range(50)]
MINUTE_BAR = """
INSERT INTO bars (width_s, symbol, bucket, open, high, low, close, ticks,
                  open_ts, high_ts, low_ts, close_ts)
SELECT $4::int, s, m, p, p * 1.002, p * 0.998, p * 1.001, $4::int,
       m, m + make_interval(secs => $4::int / 3), m + make_interval(secs => $4::int / 2),
       m + make_interval(secs => $4::int - 1)
FROM unnest($1::text[]) AS s,
     generate_series($2::timestamptz, $3::timestamptz, make_interval(secs => $4::int)) AS m,
     LATERAL (SELECT 100 + 20 * sin(extract(epoch FROM m) / 86400 + hashtext(s) % 7)) AS x(p)
ON CONFLICT DO NOTHING
"""
TEN_SECOND_BARS = """
INSERT INTO bars (width_s, symbol, bucket, open, high, low, close, ticks,
                  open_ts, high_ts, low_ts, close_ts)
SELECT 10, symbol, date_bin('10 seconds', ts, 'epoch'),
       (array_agg(price ORDER BY ts))[1], max(price), min(price),
       (array_agg(price ORDER BY ts DESC))[1], count(*), min(ts),
       (array_agg(ts ORDER BY price DESC, ts))[1], (array_agg(ts ORDER BY price, ts))[1], max(ts)
FROM ticks WHERE ts >= $1 AND ts < $2
GROUP BY 2, 3
"""


def log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def _csv(symbols: list[str], start: datetime, hours: int) -> AsyncIterator[bytes]:
    """One row a second per symbol, as CSV, an hour at a time; a random walk per symbol."""
    rng = random.Random(7)  # noqa: S311 - benchmark data
    prices = {s: 50 + 400 * rng.random() for s in symbols}
    base = int(start.timestamp())
    for hour in range(hours):
        lines = []
        for symbol in symbols:
            price = prices[symbol]
            for second in range(3600):
                price *= 1 + (rng.random() - 0.5) * 0.001
                ts = base + hour * 3600 + second
                lines.append(f"{symbol},{ts},{price:.2f}")
            prices[symbol] = price
        # epoch seconds as text, turned into timestamps by the column's type on the way in
        yield ("\n".join(lines) + "\n").encode()


async def load(url: str, scale: Scale) -> datetime:
    """Fill the database; returns `now` as the data set sees it (the newest tick)."""
    conn = await asyncpg.connect(url)
    try:
        symbols = SYMBOLS[: scale.symbols]
        await conn.execute(queries.ENSURE_STOCKS, symbols)
        await track(conn, symbols)
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        raw_start = now - timedelta(days=scale.raw_days)
        await set_retention(conn, timedelta(days=scale.raw_days), timedelta(days=400))
        await conn.execute("SELECT stockstreamer_apply_retention()")
        await create_partitions(conn, partitions_for(raw_start, now))
        began = time.perf_counter()
        # Through a staging table: COPY's CSV reader takes the epoch seconds as text.
        await conn.execute(
            "CREATE TEMP TABLE staging (symbol text, ts double precision, price float8)"
        )
        for day in range(scale.raw_days):
            day_start = raw_start + timedelta(days=day)
            await conn.execute("TRUNCATE staging")
            await conn.copy_to_table(
                "staging",
                source=_csv(symbols, day_start, 24),
                format="csv",
                columns=["symbol", "ts", "price"],
            )
            await conn.execute(
                "INSERT INTO ticks (symbol, ts, price) SELECT symbol, to_timestamp(ts), price"
                " FROM staging"
            )
            await conn.execute(TEN_SECOND_BARS, day_start, day_start + timedelta(days=1))
            log(f"raw ticks: day {day + 1}/{scale.raw_days}")
        log(f"{scale.raw_rows:,} raw ticks in {time.perf_counter() - began:.0f} s")
        # Wider bars over the raw ticks, from the 10 s bars, a day at a time.
        for day in range(scale.raw_days):
            day_start = raw_start + timedelta(days=day)
            for level in LEVELS[1:]:
                await conn.execute(
                    queries.REBUILD_BARS,
                    level.seconds,
                    10,
                    symbols,
                    day_start,
                    day_start + timedelta(days=1) - timedelta(seconds=1),
                )
        # Older history as bars only: minute bars, then hourly bars further back.
        minute_start = now - timedelta(days=scale.minute_days)
        year_start = now - timedelta(days=365 * scale.years)
        await _older(conn, symbols, minute_start, raw_start, 60)
        await _older(conn, symbols, year_start, minute_start, 3600)
        await conn.execute("VACUUM ANALYZE")
        log("bars for a year, vacuumed")
        return now
    finally:
        await conn.close()


async def _older(
    conn: asyncpg.Connection, symbols: list[str], start: datetime, end: datetime, width: int
) -> None:
    """Synthetic bars `width` seconds wide in [start, end), and every wider level from them."""
    if end <= start:
        return
    await create_partitions(
        conn, [p for p in partitions_for(start, end) if p[0] not in ("ticks", "bars_10s")]
    )
    month = timedelta(days=30)
    chunks = math.ceil((end - start) / month)
    for i in range(chunks):
        lo, hi = start + i * month, min(end, start + (i + 1) * month)
        await conn.execute(MINUTE_BAR, symbols, lo, hi - timedelta(seconds=width), width)
        for wide, finer in REBUILT:
            if finer >= width:
                await conn.execute(
                    queries.REBUILD_BARS, wide, finer, symbols, lo, hi - timedelta(seconds=1)
                )
    log(f"{width} s bars from {start:%Y-%m-%d} to {end:%Y-%m-%d}")
