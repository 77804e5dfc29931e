"""Fetcher settings, from the environment and `.env`."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from services.common.config import CommonSettings, DbRole, Duration, read_secret
from services.common.market import ALWAYS, check_calendar
from services.common.symbols import parse_symbols

DEFAULT_SYMBOLS = "GE,AMZN,NVDA,INTC,AAPL,NFLX"
ProviderName = Literal["simulated", "finnhub", "twelvedata", "alpaca"]
PROVIDER_NAMES: tuple[str, ...] = get_args(ProviderName)
# Which providers can serve past 1-minute bars (their classes' `has_history`, restated here because
# the providers import these settings; a test keeps the two in step).
HAS_HISTORY: dict[str, bool] = {
    "simulated": True,
    "finnhub": False,
    "twelvedata": True,
    "alpaca": True,
}
VENDOR_CALENDAR = "XNYS"  # the vendors serve US equities
MAX_BACKFILL = timedelta(days=400)  # what the minute bars keep (STOCKSTREAMER_RETENTION_MINUTE)
# Vendor keys keep the vendors' own names (no prefix), as their documentation spells them.
_KEY_FILES = {
    "finnhub_api_key": "FINNHUB_API_KEY_FILE",
    "twelvedata_api_key": "TWELVEDATA_API_KEY_FILE",
    "alpaca_api_key_id": "ALPACA_API_KEY_ID_FILE",
    "alpaca_api_secret_key": "ALPACA_API_SECRET_KEY_FILE",
}
# The keys each vendor needs, as (field, environment variable).
_VENDOR_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "finnhub": (("finnhub_api_key", "FINNHUB_API_KEY"),),
    "twelvedata": (("twelvedata_api_key", "TWELVEDATA_API_KEY"),),
    "alpaca": (
        ("alpaca_api_key_id", "ALPACA_API_KEY_ID"),
        ("alpaca_api_secret_key", "ALPACA_API_SECRET_KEY"),
    ),
}


def _provider_name(value: object) -> str:
    name = str(value).strip().lower()
    if name not in PROVIDER_NAMES:
        raise ValueError(f"unknown provider {name!r}: use {', '.join(PROVIDER_NAMES)}")
    return name


def parse_chain(value: object) -> list[str]:
    """An ordered, deduplicated chain of provider names from `a,b` (or a list)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError("expected a comma-separated list of providers")
    chain: list[str] = []
    for item in items:
        if str(item).strip() and (name := _provider_name(item)) not in chain:
            chain.append(name)
    if not chain:
        raise ValueError("at least one provider is required")
    return chain


class FetcherSettings(CommonSettings):
    """Every `STOCKSTREAMER_*` setting the fetcher reads."""

    symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: parse_symbols(DEFAULT_SYMBOLS),
        description="Comma-separated tickers to track, from configuration; the API adds and "
        "removes others while the fetcher runs (the watchlist).",
    )
    max_symbols: int = Field(
        50,
        ge=1,
        le=10_000,
        description="Most symbols tracked at once, configured and added; the fetcher rejects "
        "any beyond it (and beyond what its providers allow).",
    )
    provider: Annotated[list[ProviderName], NoDecode] = Field(
        default_factory=lambda: list[ProviderName](["simulated"]),
        description="Live market-data providers in order of preference, comma-separated "
        "(simulated, finnhub, twelvedata, alpaca): the first serves, the next takes over when it "
        "fails.",
    )
    history_provider: ProviderName | None = Field(
        None,
        description="Source of past 1-minute bars (backfill, healing): simulated, twelvedata or "
        "alpaca; default: the first of the chain that has history.",
    )
    failover_after: Duration = Field(
        timedelta(seconds=30),
        description="Silence of the serving provider, while the market is open, before the next "
        "one takes over.",
    )
    heal_interval: Duration = Field(
        timedelta(seconds=60), description="Time between passes that heal gaps in recent minutes."
    )
    heal_lookback: Duration = Field(
        timedelta(days=1), description="How far back healing looks for missing minutes."
    )
    calendar: str = Field(
        "",
        description="Exchange calendar of market hours (exchange-calendars name, or 24/7); "
        "default: XNYS with a vendor in the chain, 24/7 for the simulator alone.",
    )
    extended_hours: bool = Field(
        False, description="Keep pre- and after-market trades (04:00-20:00 New York for XNYS)."
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
        description="History to fill on start: seconds, 7d/12h/30m, or ISO 8601 (P7D), up to "
        "400d; 0 disables.",
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

    alpaca_api_key_id: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("ALPACA_API_KEY_ID", "alpaca_api_key_id"),
        repr=False,
        description="Alpaca key id; ALPACA_API_KEY_ID_FILE names a file holding it instead.",
    )
    alpaca_api_secret_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("ALPACA_API_SECRET_KEY", "alpaca_api_secret_key"),
        repr=False,
        description="Alpaca secret key; ALPACA_API_SECRET_KEY_FILE names a file holding it "
        "instead.",
    )
    alpaca_data_url: str = Field(
        "https://data.alpaca.markets", description="Alpaca market-data REST base."
    )
    alpaca_stream_url: str = Field(
        "wss://stream.data.alpaca.markets/v2/iex", description="Alpaca trade socket (IEX feed)."
    )
    alpaca_trading_url: str = Field(
        "https://paper-api.alpaca.markets", description="Alpaca trading API (asset lookups)."
    )
    alpaca_stream: bool = Field(True, description="Stream trades over Alpaca's WebSocket.")
    alpaca_rate_limit: int = Field(200, ge=1, description="Alpaca calls per rate period.")
    alpaca_rate_period: float = Field(60.0, gt=0, description="Alpaca rate period, seconds.")
    alpaca_stream_symbol_limit: int = Field(
        30,
        ge=1,
        description="Most symbols on Alpaca's socket (the free plan's limit): with the stream "
        "on, symbols beyond it are rejected.",
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

    @property
    def providers(self) -> list[str]:
        """The live chain, in order of preference (STOCKSTREAMER_PROVIDER)."""
        return list(self.provider)

    @model_validator(mode="after")
    def _resolve_and_check(self) -> FetcherSettings:
        """Fill the defaults that depend on the chain; every vendor used needs its keys."""
        if self.history_provider is None:
            self.history_provider = next((p for p in self.provider if HAS_HISTORY[p]), None)
        vendors = [p for p in self.provider if p != "simulated"]
        if not self.calendar:
            self.calendar = VENDOR_CALENDAR if vendors else ALWAYS
        used = [*self.provider]
        if self.history_provider is not None and self.history_provider not in used:
            used.append(self.history_provider)
        missing = []
        for name in used:
            absent = [env for field, env in _VENDOR_KEYS.get(name, ()) if not getattr(self, field)]
            if absent:
                files = " and ".join(f"{env}_FILE" for env in absent)
                missing.append(f"provider {name} needs {' and '.join(absent)} (or {files})")
        if missing:
            raise ValueError("; ".join(missing))
        if len(self.symbols) > self.max_symbols:
            raise ValueError(
                f"STOCKSTREAMER_SYMBOLS lists {len(self.symbols)} symbols; "
                f"STOCKSTREAMER_MAX_SYMBOLS allows at most {self.max_symbols}"
            )
        return self

    @field_validator("provider", mode="before")
    @classmethod
    def _parse_chain(cls, value: object) -> list[str]:
        return parse_chain(value)

    @field_validator("history_provider", mode="before")
    @classmethod
    def _history_capable(cls, value: object) -> str | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        name = _provider_name(value)
        if not HAS_HISTORY[name]:
            usable = ", ".join(p for p in PROVIDER_NAMES if HAS_HISTORY[p])
            raise ValueError(f"{name} has no history: use {usable}")
        return name

    @field_validator("calendar")
    @classmethod
    def _known_calendar(cls, value: str) -> str:
        value = value.strip()
        return check_calendar(value) if value else value

    @field_validator("failover_after", "heal_interval", "heal_lookback")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be more than zero")
        return value

    @field_validator("backfill")
    @classmethod
    def _non_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("backfill window must not be negative")
        if value > MAX_BACKFILL:
            raise ValueError("backfill window must be at most 400 days (400d)")
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
