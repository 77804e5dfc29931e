"""Fixtures for the API: the app on a free loopback port against the test's database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest

from tests.utils.api import Market, ThreadedApi


@pytest.fixture
def api(database_url: str) -> Iterator[ThreadedApi]:
    """The API (editor role, no write token, quick heartbeats) serving the test's database."""
    server = ThreadedApi(database_url, api_stream_heartbeat=0.5).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(api: ThreadedApi) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        yield http


@pytest.fixture
def market(db: asyncpg.Connection) -> Market:
    return Market(db)


TOKEN = "test-write-token-0123456789"


@pytest.fixture
def writable(database_url: str) -> Iterator[ThreadedApi]:
    """The API with a write token (TOKEN) configured."""
    server = ThreadedApi(database_url, api_stream_heartbeat=0.5, api_token=TOKEN).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def writer(writable: ThreadedApi) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `writable` that presents the token."""
    async with writable.client(Authorization=f"Bearer {TOKEN}") as http:
        yield http
