"""Fixtures of the alerts service's tests: a webhook receiver and the fetcher's tick writer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.alerts.market import Market
from tests.alerts.receiver import Receiver

SYMBOLS = ["AAPL", "NVDA", "GE"]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = await Receiver().start()
    try:
        yield hook
    finally:
        await hook.stop()


@pytest.fixture
async def market(database_url: str) -> AsyncIterator[Market]:
    """A fetcher's store on the test's database, tracking SYMBOLS."""
    writer = await Market.open(database_url, SYMBOLS)
    try:
        yield writer
    finally:
        await writer.close()
