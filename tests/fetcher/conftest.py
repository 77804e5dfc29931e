"""Fixtures of the fetcher's tests: fake vendors on loopback ports, and a listening connection."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from tests.fakes.finnhub import FakeFinnhub
from tests.fakes.twelvedata import FakeTwelveData
from tests.fetcher.notifications import Notifications


@pytest.fixture(autouse=True)
def _no_vendor_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("TWELVEDATA_", "FINNHUB_")):
            monkeypatch.delenv(name)


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
