"""Fetchers wired to the fake vendors in tests/fakes: fast retries, no backfill."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry

from services.fetcher.config import FetcherSettings
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.providers import create_providers
from services.fetcher.service import Fetcher
from tests.fakes.finnhub import FakeFinnhub
from tests.fakes.twelvedata import FakeTwelveData

FAST = {
    "calendar": "24/7",  # the fakes trade around the clock: tests pass at any hour
    "price_interval": 0.05,
    "retry_wait_initial": 0.01,
    "retry_wait_max": 0.05,
    "backfill": 0,
}


def finnhub_settings(url: str, fake: FakeFinnhub, **overrides: Any) -> FetcherSettings:
    values = {
        "database_url": url,
        "provider": "finnhub",
        "symbols": "AAPL,NVDA",
        "finnhub_api_key": fake.key,
        "finnhub_base_url": fake.base_url,
        "finnhub_ws_url": fake.ws_url,
        "finnhub_stream": False,
        "finnhub_reconnect_max": 0.2,
        **FAST,
        **overrides,
    }
    return FetcherSettings(**values)


def twelvedata_settings(url: str, fake: FakeTwelveData, **overrides: Any) -> FetcherSettings:
    values = {
        "database_url": url,
        "provider": "twelvedata",
        "symbols": "AAPL,NVDA",
        "twelvedata_api_key": fake.key,
        "twelvedata_base_url": fake.base_url,
        "twelvedata_rate_limit": 100,
        "twelvedata_rate_period": 1.0,
        **FAST,
        **overrides,
    }
    return FetcherSettings(**values)


def chain_settings(
    url: str, finnhub: FakeFinnhub, twelvedata: FakeTwelveData, **overrides: Any
) -> FetcherSettings:
    """Finnhub first (its trade stream on), Twelve Data next, failing over after a second."""
    values = {
        "database_url": url,
        "provider": "finnhub,twelvedata",
        "symbols": "AAPL,NVDA",
        "failover_after": 1,
        "finnhub_api_key": finnhub.key,
        "finnhub_base_url": finnhub.base_url,
        "finnhub_ws_url": finnhub.ws_url,
        "finnhub_stream": True,
        "finnhub_reconnect_max": 0.2,
        "twelvedata_api_key": twelvedata.key,
        "twelvedata_base_url": twelvedata.base_url,
        "twelvedata_rate_limit": 100,
        "twelvedata_rate_period": 1.0,
        **FAST,
        **overrides,
    }
    return FetcherSettings(**values)


def make_fetcher(settings: FetcherSettings) -> Fetcher:
    """The fetcher `python -m services.fetcher` would run: the settings' chain and history."""
    chain, history = create_providers(settings)
    return Fetcher(settings, chain, FetcherMetrics(CollectorRegistry()), history=history)


@asynccontextmanager
async def opened(settings: FetcherSettings) -> AsyncIterator[Fetcher]:
    """A fetcher whose vendor client and database connection are closed afterwards."""
    fetcher = make_fetcher(settings)
    try:
        yield fetcher
    finally:
        await fetcher.writer.close()
        for provider in fetcher.providers:
            await provider.aclose()


async def one_round(fetcher: Fetcher) -> None:
    """One price round, then one write of what it buffered."""
    await fetcher.fetch_prices_once()
    await fetcher.writer.flush_once()


def sample(fetcher: Fetcher, name: str, **labels: str) -> float:
    return fetcher.metrics.total(name, **labels)
