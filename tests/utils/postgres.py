"""Test databases: one migrated template, and a fresh copy of it per test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

TEMPLATE = "stockstreamer_template"


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name`."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _admin(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(with_database(url, "postgres"))


async def create_database(url: str, template: str | None = None) -> str:
    """A new uniquely-named database (a copy of `template` if given); returns its URL."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    conn = await _admin(url)
    try:
        ident = await conn.fetchval("SELECT quote_ident($1)", name)
        statement = f"CREATE DATABASE {ident}"
        if template:
            statement += " TEMPLATE " + await conn.fetchval("SELECT quote_ident($1)", template)
        await conn.execute(statement)
    finally:
        await conn.close()
    return with_database(url, name)


async def drop_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await _admin(url)
    try:
        ident = await conn.fetchval("SELECT quote_ident($1)", name)
        await conn.execute(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")
    finally:
        await conn.close()


@asynccontextmanager
async def locked(url: str, table: str) -> AsyncIterator[asyncpg.Connection]:
    """`table` locked against every reader until the block ends: queries that read it wait.

    A real slow query for tests of what happens while one runs.
    """
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            ident = await conn.fetchval("SELECT quote_ident($1)", table)
            await conn.execute(f"LOCK TABLE {ident} IN ACCESS EXCLUSIVE MODE")
            yield conn
    finally:
        await conn.close()


async def waiting_for_locks(url: str) -> int:
    """How many backends of `url`'s database wait for a lock now."""
    conn = await asyncpg.connect(url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return count
    finally:
        await conn.close()


def run(coro: object) -> object:
    """Run a coroutine from synchronous fixture code."""
    return asyncio.run(coro)  # type: ignore[arg-type]
