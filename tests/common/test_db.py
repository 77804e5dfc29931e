"""Database helpers: redacted URLs and role switching."""

from __future__ import annotations

import asyncpg
import pytest

from services.common.db import connect, create_pool, redact_url


def test_redact_url_hides_only_the_password() -> None:
    url = "postgresql://app:s3cret@db.internal:5432/stocks?sslmode=require"
    assert redact_url(url) == "postgresql://app:***@db.internal:5432/stocks?sslmode=require"
    assert redact_url("postgresql://app@db/stocks") == "postgresql://app@db/stocks"


async def test_connect_switches_role(database_url: str) -> None:
    conn = await connect(database_url, "stockstreamer_reader")
    try:
        assert await conn.fetchval("SELECT current_user") == "stockstreamer_reader"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("INSERT INTO stocks (symbol) VALUES ('AAPL')")
    finally:
        await conn.close()


async def test_pool_connections_all_switch_role(database_url: str) -> None:
    pool = await create_pool(database_url, "stockstreamer_reader", min_size=2, max_size=2)
    try:
        async with pool.acquire() as a, pool.acquire() as b:
            for conn in (a, b):
                assert await conn.fetchval("SELECT current_user") == "stockstreamer_reader"
    finally:
        await pool.close()
