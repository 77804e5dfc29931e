"""Migrations apply, roll back and apply again; the schema enforces the rules."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from services.common.migrations import MIGRATIONS_DIR, dbmate, migrate
from tests.utils.postgres import create_database, drop_database

TS = datetime(2026, 1, 2, 15, 30, tzinfo=UTC)


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> $1",
            "schema_migrations",
        )
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


def test_up_down_up(pg_admin_url: str) -> None:
    url = asyncio.run(create_database(pg_admin_url))
    try:
        migrate(url)
        assert asyncio.run(_tables(url)) == {"stocks", "ticks"}
        for _ in MIGRATIONS_DIR.glob("*.sql"):  # `down` rolls back one migration at a time
            dbmate(url, "down")
        assert asyncio.run(_tables(url)) == set()
        migrate(url)
        assert asyncio.run(_tables(url)) == {"stocks", "ticks"}
    finally:
        asyncio.run(drop_database(url))


async def test_duplicate_tick_is_stored_once(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO stocks (symbol) VALUES ('AAPL')")
    insert = "INSERT INTO ticks (symbol, ts, price) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
    await db.execute(insert, "AAPL", TS, Decimal("101.25"))
    await db.execute(insert, "AAPL", TS, Decimal("101.25"))
    assert await db.fetchval("SELECT count(*) FROM ticks") == 1


@pytest.mark.parametrize("price", [Decimal("0"), Decimal("-1")])
async def test_price_must_be_positive(db: asyncpg.Connection, price: Decimal) -> None:
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
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("INSERT INTO stocks (symbol) VALUES ('AAPL')")


async def test_writer_role_can_write_ticks(db: asyncpg.Connection) -> None:
    await db.execute("SELECT set_config('role', $1, false)", "stockstreamer_writer")
    await db.execute("INSERT INTO stocks (symbol) VALUES ('AAPL')")
    await db.execute("INSERT INTO ticks (symbol, ts, price) VALUES ('AAPL', $1, 1)", TS)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("DELETE FROM ticks")
