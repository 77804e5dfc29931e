"""Shared fixtures: a real PostgreSQL (embedded, or DATABASE_URL) and a fresh database per test."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from services.common.migrations import migrate
from services.runner.embedded_db import EmbeddedPostgres, free_port
from tests.utils.postgres import TEMPLATE, create_database, drop_database, with_database


@pytest.fixture(autouse=True)
def _clean_settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings come only from what a test sets: no developer `.env`, no stray variables."""
    for name in list(os.environ):
        if name.startswith(("STOCKSTREAMER_", "FINNHUB_", "TWELVEDATA_", "ALPACA_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """URL of a server where tests may create databases: DATABASE_URL, or an embedded one."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="stockstreamer-pg-")) / "data", port=free_port(), durable=False
    )
    server.start()
    try:
        yield server.url_for("postgres")
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def template_url(pg_admin_url: str) -> str:
    """A database with every migration applied, copied for each test."""
    url = with_database(pg_admin_url, TEMPLATE)

    async def reset() -> None:
        await drop_database(url)

    asyncio.run(reset())
    migrate(url)
    return url


@pytest.fixture
def database_url(pg_admin_url: str, template_url: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    url = asyncio.run(create_database(pg_admin_url, template=TEMPLATE))
    try:
        yield url
    finally:
        asyncio.run(drop_database(url))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test's database."""
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()
