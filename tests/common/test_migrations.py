"""Migrations apply, roll back and apply again, also over stored data; the schema enforces rules."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from services.common.migrations import MIGRATIONS_DIR, dbmate, migrate
from services.common.retention import set_retention
from services.fetcher.store import create_partitions, partitions_for
from tests.utils.postgres import create_database, drop_database

TS = datetime(2026, 1, 2, 15, 30, tzinfo=UTC)
TABLES = {
    "stocks",
    "ticks",
    "bars",
    "partition_policy",
    "feed",
    "heal_misses",
    "watchlist",
    "alerts",
    "alert_firings",
    "alert_deliveries",
    "alert_channels",
    "alert_cursor",
}
PARTITIONING = "20261126000000_partitioned_ticks_and_bars.sql"


async def _tables(url: str) -> set[str]:
    """Tables that are not partitions of another."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE nspname = 'public' AND relkind IN ('r', 'p') AND NOT relispartition"
            " AND relname <> 'schema_migrations'"
        )
    finally:
        await conn.close()
    return {r["relname"] for r in rows}


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """The test's database, with partitions for the day the tests write to."""
    conn = await asyncpg.connect(database_url)
    await create_partitions(conn, partitions_for(TS, TS))
    try:
        yield conn
    finally:
        await conn.close()


def test_up_down_up(pg_admin_url: str) -> None:
    url = asyncio.run(create_database(pg_admin_url))
    try:
        migrate(url)
        assert asyncio.run(_tables(url)) == TABLES
        for _ in MIGRATIONS_DIR.glob("*.sql"):  # `down` rolls back one migration at a time
            dbmate(url, "down")
        assert asyncio.run(_tables(url)) == set()
        migrate(url)
        assert asyncio.run(_tables(url)) == TABLES
    finally:
        asyncio.run(drop_database(url))


async def _populate(url: str) -> list[asyncpg.Record]:
    """Ticks over three days in the table as it was before partitioning; returns them."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO stocks (symbol) VALUES ('AAPL'), ('NVDA')")
        await conn.execute(
            "INSERT INTO ticks (symbol, ts, price, backfilled)"
            " SELECT s, $1::timestamptz + n * interval '37 seconds', 100 + (n % 91) * 0.25, n < 50"
            " FROM unnest(ARRAY['AAPL', 'NVDA']) AS s, generate_series(0, 7000) AS n",
            TS,
        )
        return await conn.fetch("SELECT * FROM ticks ORDER BY event_id")
    finally:
        await conn.close()


async def _stored(url: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT symbol, ts, price::float8, volume, event_id, backfilled FROM ticks"
            " ORDER BY event_id"
        )
    finally:
        await conn.close()
    return [tuple(r) for r in rows]


def test_a_populated_database_converts_in_place_and_back(pg_admin_url: str, tmp_path: Path) -> None:
    before_dir = tmp_path / "before"
    before_dir.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < PARTITIONING:
            shutil.copy(path, before_dir)
    url = asyncio.run(create_database(pg_admin_url))
    try:
        dbmate(url, "up", migrations_dir=before_dir)
        original = [
            (r["symbol"], r["ts"], float(r["price"]), r["volume"], r["event_id"], r["backfilled"])
            for r in asyncio.run(_populate(url))
        ]

        migrate(url)  # partitions the table in place and summarises it into bars
        assert asyncio.run(_stored(url)) == original
        asyncio.run(_check_converted(url, len(original)))

        dbmate(url, "down")
        assert asyncio.run(_stored(url)) == original
        migrate(url)
        assert asyncio.run(_stored(url)) == original
    finally:
        asyncio.run(drop_database(url))


async def _check_converted(url: str, count: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        kind = await conn.fetchval("SELECT relkind FROM pg_class WHERE relname = 'ticks'")
        assert kind == b"p"  # a partitioned table
        # every level summarises every tick exactly once
        per_level = await conn.fetch("SELECT width_s, sum(ticks) AS n FROM bars GROUP BY 1")
        widths = (10, 60, 120, 300, 900, 1800, 3600, 14400, 86400)
        assert {r["width_s"]: r["n"] for r in per_level} == dict.fromkeys(widths, count)
        day = await conn.fetchrow(
            "SELECT * FROM bars WHERE width_s = 86400 AND symbol = 'AAPL' AND bucket = $1",
            TS.replace(hour=0, minute=0),
        )
        raw = await conn.fetchrow(
            "SELECT min(price) AS low, max(price) AS high, count(*) AS n FROM ticks"
            " WHERE symbol = 'AAPL' AND ts >= $1 AND ts < $1 + interval '1 day'",
            TS.replace(hour=0, minute=0),
        )
        assert day is not None and raw is not None
        assert (day["low"], day["high"], day["ticks"]) == (raw["low"], raw["high"], raw["n"])
        # new ticks continue the same event ids, in a partition of their own
        after = TS + timedelta(days=10)
        await create_partitions(conn, partitions_for(after, after))
        new_id = await conn.fetchval(
            "INSERT INTO ticks (symbol, ts, price) VALUES ('AAPL', $1, 1) RETURNING event_id", after
        )
        assert new_id == count + 1
        await conn.execute("DELETE FROM ticks WHERE event_id = $1", new_id)
    finally:
        await conn.close()


async def test_duplicate_tick_is_stored_once(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO stocks (symbol) VALUES ('AAPL')")
    insert = "INSERT INTO ticks (symbol, ts, price) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
    await db.execute(insert, "AAPL", TS, 101.25)
    await db.execute(insert, "AAPL", TS, 101.25)
    assert await db.fetchval("SELECT count(*) FROM ticks") == 1


@pytest.mark.parametrize("price", [0.0, -1.0, float("nan"), float("inf")])
async def test_price_must_be_positive_and_finite(db: asyncpg.Connection, price: float) -> None:
    await db.execute("INSERT INTO stocks (symbol) VALUES ('AAPL')")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("INSERT INTO ticks (symbol, ts, price) VALUES ('AAPL', $1, $2)", TS, price)


@pytest.mark.parametrize("symbol", ["aapl", "TOOLONGSYMBOL1", "A$", ""])
async def test_symbol_pattern_is_enforced(db: asyncpg.Connection, symbol: str) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("INSERT INTO stocks (symbol) VALUES ($1)", symbol)


async def test_tick_needs_a_tracked_stock(db: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute("INSERT INTO ticks (symbol, ts, price) VALUES ('NOPE', $1, 1)", TS)


async def test_a_tick_needs_its_partition(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO stocks (symbol) VALUES ('AAPL')")
    with pytest.raises(asyncpg.CheckViolationError, match="no partition"):
        await db.execute(
            "INSERT INTO ticks (symbol, ts, price) VALUES ('AAPL', $1, 1)", TS + timedelta(days=3)
        )


async def test_event_ids_increase(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO stocks (symbol) VALUES ('AAPL'), ('NVDA')")
    for i in range(3):
        await db.execute(
            "INSERT INTO ticks (symbol, ts, price) VALUES ('AAPL', $1, 1), ('NVDA', $1, 2)",
            TS.replace(second=i),
        )
    ids = [r["event_id"] for r in await db.fetch("SELECT event_id FROM ticks ORDER BY ts, symbol")]
    assert ids == sorted(ids) and len(set(ids)) == 6


async def test_reader_role_cannot_write(db: asyncpg.Connection) -> None:
    await db.execute("SELECT set_config('role', $1, false)", "stockstreamer_reader")
    assert await db.fetchval("SELECT count(*) FROM stocks") == 0
    assert await db.fetchval("SELECT count(*) FROM bars") == 0
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("INSERT INTO stocks (symbol) VALUES ('AAPL')")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("SELECT stockstreamer_ensure_partition('ticks', now())")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("SELECT stockstreamer_apply_retention()")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("CALL stockstreamer_set_retention('1 day', '1 day')")


async def test_writer_role_writes_but_never_deletes(db: asyncpg.Connection) -> None:
    await db.execute("SELECT set_config('role', $1, false)", "stockstreamer_writer")
    await db.execute("INSERT INTO stocks (symbol) VALUES ('AAPL')")
    await db.execute("INSERT INTO ticks (symbol, ts, price) VALUES ('AAPL', $1, 1)", TS)
    # partitions only through the functions the migrations made for it
    assert await db.fetchval("SELECT stockstreamer_ensure_partition('ticks', $1)", TS) is False
    later = TS + timedelta(days=1)
    assert await db.fetchval("SELECT stockstreamer_ensure_partition('ticks', $1)", later) is True
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("DELETE FROM ticks")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute(
            "CREATE TABLE ticks_x PARTITION OF ticks FOR VALUES FROM (MINVALUE) TO ('2020-01-01')"
        )
    with pytest.raises(asyncpg.RaiseError, match="not a time-partitioned table"):
        await db.execute("SELECT stockstreamer_ensure_partition('stocks', now())")


async def test_retention_drops_whole_expired_partitions(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO stocks (symbol) VALUES ('AAPL')")
    now = datetime.now(UTC)
    days = [now - timedelta(days=d) for d in (40, 31, 29, 0)]
    for day in days:
        await create_partitions(db, partitions_for(day, day))
        await db.execute("INSERT INTO ticks (symbol, ts, price) VALUES ('AAPL', $1, 1)", day)

    await set_retention(db, timedelta(days=30), timedelta(days=400))
    dropped = await db.fetch("SELECT stockstreamer_apply_retention() AS d")

    expired = [TS, *days[:2]]  # the fixture's day too
    assert sorted(r["d"] for r in dropped) == sorted(
        f"{table}_p{day:%Y%m%d}" for day in expired for table in ("ticks", "bars_10s")
    )
    kept = [r["ts"] for r in await db.fetch("SELECT ts FROM ticks ORDER BY ts")]
    assert kept == days[2:]
    horizon = await db.fetchval("SELECT horizon FROM partition_policy WHERE parent = 'ticks'")
    assert abs(horizon - (now - timedelta(days=30))) < timedelta(minutes=1)
    # a longer retention later never claims the dropped days back
    await set_retention(db, timedelta(days=90), timedelta(days=400))
    await db.fetch("SELECT stockstreamer_apply_retention()")
    later = await db.fetchval("SELECT horizon FROM partition_policy WHERE parent = 'ticks'")
    assert later == horizon


HARDENING = "20261202100000_partition_functions_hardened.sql"
POLICY = "SELECT parent, keep::text FROM partition_policy ORDER BY parent"


async def _keeps(conn: asyncpg.Connection) -> tuple[str, str]:
    """How long raw ticks and minute bars are kept, as PostgreSQL shows it."""
    rows = {r["parent"]: r["keep"] for r in await conn.fetch(POLICY)}
    assert rows["ticks"] == rows["bars_10s"]
    assert len({rows[p] for p in ("bars_1m", "bars_2m", "bars_5m", "bars_15m", "bars_30m")}) == 1
    return rows["ticks"], rows["bars_1m"]


@pytest.mark.parametrize(
    ("raw", "minute", "expected"),
    [
        (None, None, ("30 days", "400 days")),  # unset: the documented defaults
        ("", " ", ("30 days", "400 days")),
        ("86400", "7d", ("1 day", "7 days")),
        ("2592000.0", "400d", ("30 days", "400 days")),  # what the runner sends (seconds)
        ("P7D", "PT36H", None),  # minute bars shorter than raw ticks: refused
        ("PT36H", "P1Y", ("1 day 12:00:00", "1 year")),
        ("1.5d", "2w", ("1 day 12:00:00", "14 days")),
    ],
)
async def test_the_owner_sets_the_retention_in_any_settings_format(
    db: asyncpg.Connection, raw: str | None, minute: str | None, expected: tuple[str, str] | None
) -> None:
    await set_retention(db, timedelta(days=3), timedelta(days=5))
    call = "CALL stockstreamer_set_retention($1, $2)"
    if expected is None:
        with pytest.raises(asyncpg.InvalidParameterValueError, match="must not be shorter"):
            await db.execute(call, raw, minute)
        assert await _keeps(db) == ("3 days", "5 days")
    else:
        await db.execute(call, raw, minute)
        assert await _keeps(db) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("a week", "retention: 'a week' is not a duration"),
        ("7 parsecs", "retention: '7 parsecs' is not a duration"),
        ("12h", "retention: '12h' must be at least 1 day"),
        ("0", "retention: '0' must be at least 1 day"),
        ("-5d", "retention: '-5d' must be at least 1 day"),
        ("2 days ago", "retention: '2 days ago' must be at least 1 day"),
        ("infinity", "retention: 'infinity' must be at least 1 day and finite"),
    ],
)
async def test_a_bad_retention_is_refused_by_name(
    db: asyncpg.Connection, raw: str, message: str
) -> None:
    before = await _keeps(db)
    with pytest.raises(asyncpg.InvalidParameterValueError, match=message):
        await db.execute("CALL stockstreamer_set_retention($1, '400d')", raw)
    minute = message.replace("retention:", "retention_minute:")
    with pytest.raises(asyncpg.InvalidParameterValueError, match=minute):
        await db.execute("CALL stockstreamer_set_retention('1d', $1)", raw)
    assert await _keeps(db) == before


async def _contents(url: str) -> dict[str, list[tuple[object, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        return {
            "ticks": [tuple(r) for r in await conn.fetch("SELECT * FROM ticks ORDER BY event_id")],
            "bars": [
                tuple(r)
                for r in await conn.fetch("SELECT * FROM bars ORDER BY width_s, symbol, bucket")
            ],
            "policy": [
                tuple(r) for r in await conn.fetch("SELECT * FROM partition_policy ORDER BY 1")
            ],
            "tables": [(name,) for name in sorted(await _all_tables(conn))],
        }
    finally:
        await conn.close()


async def _all_tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        " AND relkind IN ('r', 'p') AND relname <> 'schema_migrations'"
    )
    return {r["relname"] for r in rows}


async def _populate_through_the_writer(url: str) -> None:
    """Ticks and bars of today and of five days ago, written as the fetcher wrote them then
    (the schema is the one before tick sources: plain SQL, not today's writer)."""
    conn = await asyncpg.connect(url)
    try:
        await set_retention(conn, timedelta(days=90), timedelta(days=400))
        await conn.execute("INSERT INTO stocks (symbol) VALUES ('AAPL'), ('NVDA')")
        now = datetime.now(UTC).replace(microsecond=0)
        for start in (now - timedelta(days=5), now - timedelta(hours=1)):
            for day in {start.date(), (start + timedelta(seconds=7 * 300)).date()}:
                at = datetime(day.year, day.month, day.day, tzinfo=UTC)
                for parent in ("ticks", "bars_10s", "bars_1m"):
                    await conn.fetchval("SELECT stockstreamer_ensure_partition($1, $2)", parent, at)
            rows = [
                (s, start + timedelta(seconds=7 * n), float(100 + n % 13))
                for s in ("AAPL", "NVDA")
                for n in range(300)
            ]
            await conn.executemany(
                "INSERT INTO ticks (symbol, ts, price, backfilled) VALUES ($1, $2, $3, true)", rows
            )
            await conn.execute(POPULATE_BARS, start, start + timedelta(seconds=7 * 300))
    finally:
        await conn.close()


# Minute and 10 s bars of the ticks in [$1, $2], as the writer of the time built them.
POPULATE_BARS = """
INSERT INTO bars (width_s, symbol, bucket, open, high, low, close, ticks,
                  open_ts, high_ts, low_ts, close_ts)
SELECT w, symbol, date_bin(make_interval(secs => w), ts, 'epoch'),
       (array_agg(price ORDER BY ts))[1], max(price), min(price),
       (array_agg(price ORDER BY ts DESC))[1], count(*),
       min(ts), (array_agg(ts ORDER BY price DESC, ts))[1],
       (array_agg(ts ORDER BY price, ts))[1], max(ts)
FROM ticks CROSS JOIN unnest(ARRAY[10, 60]) AS w
WHERE ts BETWEEN $1 AND $2
GROUP BY 1, 2, 3
"""


async def _signatures(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT p.oid::regprocedure::text AS f FROM pg_proc p"
            " WHERE p.proname LIKE 'stockstreamer\\_%'"
        )
    finally:
        await conn.close()
    return {r["f"] for r in rows}


def test_the_hardening_rolls_back_and_forth_over_stored_data(
    pg_admin_url: str, tmp_path: Path
) -> None:
    until = tmp_path / "until-hardening"
    until.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name <= HARDENING:
            shutil.copy(path, until)
    url = asyncio.run(create_database(pg_admin_url))
    try:
        dbmate(url, "up", migrations_dir=until)
        hardened = asyncio.run(_signatures(url))
        assert "stockstreamer_apply_retention()" in hardened
        asyncio.run(_populate_through_the_writer(url))
        stored = asyncio.run(_contents(url))
        assert len(stored["ticks"]) == 1200 and stored["bars"]

        dbmate(url, "down", migrations_dir=until)
        assert asyncio.run(_contents(url)) == stored
        assert "stockstreamer_apply_retention(interval,interval)" in asyncio.run(_signatures(url))

        dbmate(url, "up", migrations_dir=until)
        assert asyncio.run(_contents(url)) == stored
        assert asyncio.run(_signatures(url)) == hardened
    finally:
        asyncio.run(drop_database(url))
