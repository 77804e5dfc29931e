"""Market-data providers, chosen by STOCKSTREAMER_PROVIDER (a chain) and ..._HISTORY_PROVIDER."""

from __future__ import annotations

from services.fetcher.config import FetcherSettings
from services.fetcher.providers.alpaca import AlpacaProvider
from services.fetcher.providers.base import (
    HistoryUnavailable,
    Provider,
    ProviderError,
    ProviderFatal,
    TradeStream,
)
from services.fetcher.providers.finnhub import FinnhubProvider
from services.fetcher.providers.simulated import SimulatedProvider
from services.fetcher.providers.twelvedata import TwelveDataProvider

__all__ = [
    "AlpacaProvider",
    "FinnhubProvider",
    "HistoryUnavailable",
    "Provider",
    "ProviderError",
    "ProviderFatal",
    "SimulatedProvider",
    "TradeStream",
    "TwelveDataProvider",
    "create_provider",
    "create_providers",
]


def create_provider(settings: FetcherSettings, name: str | None = None) -> Provider:
    """The provider called `name` (default: the first of the chain), built from the settings."""
    s = settings
    name = name or s.provider[0]
    if name == "simulated":
        return SimulatedProvider(
            seed=s.sim_seed, volatility=s.sim_volatility, step_seconds=s.price_interval
        )
    if name == "finnhub" and s.finnhub_api_key is not None:
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
    if name == "twelvedata" and s.twelvedata_api_key is not None:
        return TwelveDataProvider(
            s.twelvedata_api_key.get_secret_value(),
            base_url=s.twelvedata_base_url,
            rate_limit=s.twelvedata_rate_limit,
            rate_period=s.twelvedata_rate_period,
            daily_limit=s.twelvedata_daily_limit or None,
            concurrency=s.provider_concurrency,
            timeout=s.provider_timeout,
        )
    if name == "alpaca" and s.alpaca_api_key_id is not None and s.alpaca_api_secret_key is not None:
        return AlpacaProvider(
            s.alpaca_api_key_id.get_secret_value(),
            s.alpaca_api_secret_key.get_secret_value(),
            data_url=s.alpaca_data_url,
            stream_url=s.alpaca_stream_url,
            trading_url=s.alpaca_trading_url,
            stream=s.alpaca_stream,
            rate_limit=s.alpaca_rate_limit,
            rate_period=s.alpaca_rate_period,
            concurrency=s.provider_concurrency,
            timeout=s.provider_timeout,
            stream_symbol_limit=s.alpaca_stream_symbol_limit,
        )
    raise ValueError(f"provider {name!r} is unknown or has no API key")


def create_providers(settings: FetcherSettings) -> tuple[list[Provider], Provider | None]:
    """The live chain, in order, and the history source (the chain's own instance when in it)."""
    chain = [create_provider(settings, name) for name in settings.provider]
    name = settings.history_provider
    if name is None:
        return chain, None
    history = next((p for p in chain if p.name == name), None)
    return chain, history or create_provider(settings, name)
