"""Database helpers: redacted URLs, role switching, waiting for a server."""

from __future__ import annotations

import asyncpg
import pytest

from services.common.db import connect, create_pool, redact_url, wait_for_database
from services.common.embedded_db import free_port


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


async def test_wait_for_database_gives_up_after_its_timeout() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/x?sslmode=disable"
    with pytest.raises(OSError):
        await wait_for_database(url, timeout=0.3, interval=0.1)


async def test_wait_for_database_returns_when_reachable(database_url: str) -> None:
    await wait_for_database(database_url, timeout=5)
