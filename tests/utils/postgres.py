"""Test databases: one migrated template, and a fresh copy of it per test."""

from __future__ import annotations

import asyncio
import uuid
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


def run(coro: object) -> object:
    """Run a coroutine from synchronous fixture code."""
    return asyncio.run(coro)  # type: ignore[arg-type]
