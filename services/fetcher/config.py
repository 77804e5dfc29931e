"""Fetcher settings, from the environment and `.env`."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from services.common.config import CommonSettings, DbRole, Duration, read_secret
from services.common.symbols import parse_symbols

DEFAULT_SYMBOLS = "GE,AMZN,NVDA,INTC,AAPL,NFLX"
# Vendor keys keep the vendors' own names (no prefix), as their documentation spells them.
_KEY_FILES = {
    "finnhub_api_key": "FINNHUB_API_KEY_FILE",
    "twelvedata_api_key": "TWELVEDATA_API_KEY_FILE",
}


class FetcherSettings(CommonSettings):
    """Every `STOCKSTREAMER_*` setting the fetcher reads."""

    symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: parse_symbols(DEFAULT_SYMBOLS),
        description="Comma-separated tickers to track.",
    )
    provider: Literal["simulated", "finnhub", "twelvedata"] = Field(
        "simulated", description="Market-data source: simulated, finnhub or twelvedata."
    )
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
    fetcher_disk_path: Path = Field(
        Path("."), description="A path on the database's disk, for the disk-space metrics."
    )
    fetcher_db_role: DbRole = Field(
        "stockstreamer_writer",
        description="Role the fetcher switches to on connect; `none` keeps the login user.",
    )

    backfill: Duration = Field(
        timedelta(days=365),
        description="History to fill on start: seconds, 7d/12h/30m, or ISO 8601 (P7D); 0 disables.",
    )
    provider_timeout: float = Field(10.0, gt=0, le=120, description="Seconds per vendor request.")
    provider_concurrency: int = Field(4, ge=1, le=64, description="Vendor requests in flight.")

    finnhub_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("FINNHUB_API_KEY", "finnhub_api_key"),
        repr=False,
        description="Finnhub key; FINNHUB_API_KEY_FILE names a file holding it instead.",
    )
    finnhub_base_url: str = Field("https://finnhub.io/api/v1", description="Finnhub REST base.")
    finnhub_ws_url: str = Field("wss://ws.finnhub.io", description="Finnhub trade socket.")
    finnhub_stream: bool = Field(True, description="Stream trades over Finnhub's WebSocket.")
    finnhub_rate_limit: int = Field(60, ge=1, description="Finnhub calls per rate period.")
    finnhub_rate_period: float = Field(60.0, gt=0, description="Finnhub rate period, seconds.")
    finnhub_reconnect_max: float = Field(
        30.0, gt=0, description="Longest wait between trade-socket reconnects, seconds."
    )
    twelvedata_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("TWELVEDATA_API_KEY", "twelvedata_api_key"),
        repr=False,
        description="Twelve Data key; TWELVEDATA_API_KEY_FILE names a file holding it instead.",
    )
    twelvedata_base_url: str = Field(
        "https://api.twelvedata.com", description="Twelve Data REST base."
    )
    twelvedata_rate_limit: int = Field(8, ge=1, description="Twelve Data credits per rate period.")
    twelvedata_rate_period: float = Field(
        60.0, gt=0, description="Twelve Data rate period, seconds."
    )
    twelvedata_daily_limit: int = Field(
        800, ge=0, description="Twelve Data credits per day, spread evenly (0: no daily cap)."
    )

    @model_validator(mode="before")
    @classmethod
    def _read_key_files(cls, data: Any) -> Any:
        """Vendor keys from *_API_KEY_FILE (Docker secrets) when not given directly."""
        if not isinstance(data, dict):
            return data
        for field, file_var in _KEY_FILES.items():
            direct = data.get(field) or data.get(field.upper())
            try:
                secret = read_secret(direct, os.environ.get(file_var)) if not direct else None
            except OSError as exc:  # a clear settings error, not a traceback
                raise ValueError(
                    f"{file_var}: cannot read {exc.filename}: {exc.strerror}"
                ) from None
            if secret:
                data = {**data, field: secret}
        return data

    @model_validator(mode="after")
    def _key_for_provider(self) -> FetcherSettings:
        if self.provider == "finnhub" and self.finnhub_api_key is None:
            raise ValueError("provider finnhub needs FINNHUB_API_KEY (or FINNHUB_API_KEY_FILE)")
        if self.provider == "twelvedata" and self.twelvedata_api_key is None:
            raise ValueError(
                "provider twelvedata needs TWELVEDATA_API_KEY (or TWELVEDATA_API_KEY_FILE)"
            )
        return self

    @field_validator("backfill")
    @classmethod
    def _non_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("backfill window must not be negative")
        return value

    @field_validator("symbols", mode="before")
    @classmethod
    def _parse_symbols(cls, value: object) -> list[str]:
        if isinstance(value, str | list | tuple):
            symbols = parse_symbols(value)
            if not symbols:
                raise ValueError("at least one symbol is required")
            return symbols
        raise ValueError("expected a comma-separated list of symbols")
