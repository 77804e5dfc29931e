"""Market-data providers, chosen by STOCKSTREAMER_PROVIDER."""

from __future__ import annotations

from services.fetcher.config import FetcherSettings
from services.fetcher.providers.base import (
    HistoryUnavailable,
    Provider,
    ProviderError,
    TradeStream,
)
from services.fetcher.providers.finnhub import FinnhubProvider
from services.fetcher.providers.simulated import SimulatedProvider
from services.fetcher.providers.twelvedata import TwelveDataProvider

__all__ = [
    "FinnhubProvider",
    "HistoryUnavailable",
    "Provider",
    "ProviderError",
    "SimulatedProvider",
    "TradeStream",
    "TwelveDataProvider",
    "create_provider",
]


def create_provider(settings: FetcherSettings) -> Provider:
    """The provider named in the settings."""
    s = settings
    if s.provider == "simulated":
        return SimulatedProvider(
            seed=s.sim_seed, volatility=s.sim_volatility, step_seconds=s.price_interval
        )
    if s.provider == "finnhub" and s.finnhub_api_key is not None:
        return FinnhubProvider(
            s.finnhub_api_key.get_secret_value(),
            base_url=s.finnhub_base_url,
            ws_url=s.finnhub_ws_url,
            stream=s.finnhub_stream,
            rate_limit=s.finnhub_rate_limit,
            rate_period=s.finnhub_rate_period,
            concurrency=s.provider_concurrency,
            timeout=s.provider_timeout,
            reconnect_max=s.finnhub_reconnect_max,
        )
    if s.provider == "twelvedata" and s.twelvedata_api_key is not None:
        return TwelveDataProvider(
            s.twelvedata_api_key.get_secret_value(),
            base_url=s.twelvedata_base_url,
            rate_limit=s.twelvedata_rate_limit,
            rate_period=s.twelvedata_rate_period,
            daily_limit=s.twelvedata_daily_limit or None,
            concurrency=s.provider_concurrency,
            timeout=s.provider_timeout,
        )
    raise ValueError(f"provider {s.provider!r} is unknown or has no API key")
