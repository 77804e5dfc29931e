"""Fetcher settings, from the environment and `.env`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from services.common.config import CommonSettings
from services.common.symbols import parse_symbols

DEFAULT_SYMBOLS = "GE,AMZN,NVDA,INTC,AAPL,NFLX"


class FetcherSettings(CommonSettings):
    """Every `STOCKSTREAMER_*` setting the fetcher reads."""

    symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: parse_symbols(DEFAULT_SYMBOLS),
        description="Comma-separated tickers to track.",
    )
    provider: Literal["simulated"] = "simulated"
    price_interval: float = Field(1.0, gt=0, le=3600, description="Seconds between price rounds.")
    metadata_interval: float = Field(
        6 * 3600, gt=0, description="Seconds between name/logo/52-week refreshes (also at start)."
    )
    sim_seed: int = Field(42, description="Seed of the simulated market; same seed, same prices.")
    sim_volatility: float = Field(0.5, gt=0, le=5, description="Annualised volatility (simulated).")
    batch_size: int = Field(5000, ge=1, le=100_000, description="Most ticks in one write.")
    buffer_capacity: int = Field(
        1_000_000, ge=1, description="Ticks held in memory while the database is unreachable."
    )
    retry_attempts: int = Field(3, ge=1, le=20, description="Provider attempts per round.")
    retry_wait_initial: float = Field(0.5, ge=0, description="First retry back-off, seconds.")
    retry_wait_max: float = Field(5.0, ge=0, description="Longest retry back-off, seconds.")
    shutdown_timeout: float = Field(
        8.0, gt=0, le=60, description="Seconds to flush the buffer on SIGTERM before exiting."
    )
    fetcher_metrics_host: str = Field("127.0.0.1", description="Address of the /metrics listener.")
    fetcher_metrics_port: int = Field(
        9101, ge=0, le=65535, description="Port of /metrics (0: random)."
    )
    fetcher_db_role: str = Field(
        "stockstreamer_writer", description="Role the fetcher switches to; empty to stay as is."
    )

    @field_validator("symbols", mode="before")
    @classmethod
    def _parse_symbols(cls, value: object) -> list[str]:
        if isinstance(value, str | list | tuple):
            symbols = parse_symbols(value)
            if not symbols:
                raise ValueError("at least one symbol is required")
            return symbols
        raise ValueError("expected a comma-separated list of symbols")
