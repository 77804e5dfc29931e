"""Market-data providers, chosen by STOCKSTREAMER_PROVIDER."""

from __future__ import annotations

from services.fetcher.config import FetcherSettings
from services.fetcher.providers.base import Provider, ProviderError
from services.fetcher.providers.simulated import SimulatedProvider

__all__ = ["Provider", "ProviderError", "SimulatedProvider", "create_provider"]


def create_provider(settings: FetcherSettings) -> Provider:
    """The provider named in the settings."""
    if settings.provider == "simulated":
        return SimulatedProvider(
            seed=settings.sim_seed,
            volatility=settings.sim_volatility,
            step_seconds=settings.price_interval,
        )
    raise ValueError(f"unknown provider {settings.provider!r}")
