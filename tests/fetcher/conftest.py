"""Fixtures of the fetcher's tests: fake vendors on loopback ports, and a listening connection."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from services.common.retention import set_retention
from tests.fakes.finnhub import FakeFinnhub
from tests.fakes.twelvedata import FakeTwelveData
from tests.fetcher.notifications import Notifications


@pytest.fixture(autouse=True)
def _no_vendor_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("TWELVEDATA_", "FINNHUB_", "ALPACA_")):
            monkeypatch.delenv(name)


@pytest.fixture
def database_url(database_url: str) -> str:
    """The test's database, keeping ten years as raw ticks, as its owner set it: the vendors'
    documented examples date from 2021, and the tests' own fixed dates from early 2026."""

    async def keep_ten_years() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await set_retention(conn, timedelta(days=3650), timedelta(days=3650))
        finally:
            await conn.close()

    asyncio.run(keep_ten_years())
    return database_url


@pytest.fixture
async def finnhub() -> AsyncIterator[FakeFinnhub]:
    fake = await FakeFinnhub().start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def twelvedata() -> AsyncIterator[FakeTwelveData]:
    fake = await FakeTwelveData().start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def notes(database_url: str) -> AsyncIterator[Notifications]:
    """NOTIFY prices/stocks/history as received by another connection."""
    listening = await Notifications.listen(database_url)
    try:
        yield listening
    finally:
        await listening.close()
