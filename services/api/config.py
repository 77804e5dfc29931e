"""API settings, from the environment and `.env`."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from services.common.config import CommaList, CommonSettings, DbRole, trusted_proxies_field
from services.common.market import check_calendar


class ApiSettings(CommonSettings):
    """Every `STOCKSTREAMER_*` setting the API reads."""

    api_host: str = Field("127.0.0.1", description="Address the API listens on.")
    api_port: int = Field(8000, ge=0, le=65535, description="Port the API listens on (0: random).")
    api_db_role: DbRole = Field(
        "stockstreamer_reader",
        description="Role the API switches to on connect; `none` keeps the login user.",
    )
    api_pool_size: int = Field(20, ge=2, le=100, description="Most pooled database connections.")
    api_pool_size_per_client: int = Field(
        5,
        ge=1,
        le=99,
        description="Pooled connections one client address holds at once (less than "
        "api_pool_size; by default at most half of it); beyond, a request waits a second for "
        "one of its own, then 429.",
    )
    api_statement_timeout: float = Field(
        5.0, gt=0, le=300, description="Seconds any one query may run before it is cancelled (503)."
    )
    api_history_concurrency: int = Field(
        8, ge=2, le=100, description="History requests served at once; beyond: 503 + Retry-After."
    )
    api_history_concurrency_per_client: int = Field(
        2,
        ge=1,
        le=99,
        description="History requests (prices, bars, stream replays) one client address has "
        "served at once (less than api_history_concurrency; by default at most half of it); "
        "beyond, a request waits a second for one of its own, then 429.",
    )
    api_history_rate: float = Field(
        10.0,
        gt=0,
        le=10_000,
        description="History requests (prices, bars, stream replays) a second one client address "
        "may make on average; beyond: 429 + Retry-After.",
    )
    api_history_burst: int = Field(
        40,
        ge=1,
        le=100_000,
        description="History requests one client address may make at once above its rate.",
    )
    api_history_event_interval: float = Field(
        5.0,
        ge=0,
        le=300,
        description="Least seconds between two `history` events on streams; backfill "
        "notifications in between are merged into the next.",
    )
    trusted_proxies: CommaList = trusted_proxies_field()
    cors_origins: CommaList = Field(
        default_factory=list,
        description="Comma-separated origins allowed by CORS (e.g. http://localhost:5006).",
    )
    api_stream_heartbeat: float = Field(
        15.0,
        gt=0,
        le=300,
        description="Most seconds a stream goes without a byte: one sent nothing else for so "
        "long gets a `: heartbeat` comment.",
    )
    api_stream_queue_size: int = Field(
        256, ge=1, le=100_000, description="Undelivered batches a stream may hold before it is cut."
    )
    api_stream_replay_limit: int = Field(
        10_000, ge=1, le=1_000_000, description="Most ticks replayed on resume; beyond: `reset`."
    )
    api_max_streams: int = Field(
        1000, ge=2, le=100_000, description="Event streams open at once; beyond: 503 + Retry-After."
    )
    api_max_streams_per_client: int = Field(
        20,
        ge=1,
        le=99_999,
        description="Event streams one client address holds open (less than api_max_streams; by "
        "default at most half of it); beyond: 429 + Retry-After.",
    )
    api_limit_concurrency: int = Field(
        1500,
        ge=2,
        le=200_000,
        description="Connections and requests uvicorn serves at once (streams included); "
        "beyond: 503.",
    )
    api_shutdown_timeout: float = Field(
        5.0, gt=0, le=60, description="Seconds open requests get to finish on SIGTERM."
    )

    provider: CommaList = Field(
        default_factory=lambda: ["simulated"],
        description="The fetcher's providers, in order (e.g. alpaca,finnhub). The API reads it, "
        "with calendar and extended_hours, only to describe the market until the fetcher has "
        "written its feed.",
    )
    calendar: str | None = Field(
        None,
        description="The market's exchange calendar (an exchange-calendars name, or 24/7); "
        "default XNYS when provider names a vendor, 24/7 for the simulator alone.",
    )
    extended_hours: bool = Field(
        False, description="Whether the market's pre- and after-market hours count as open."
    )

    @field_validator("calendar")
    @classmethod
    def _known_calendar(cls, value: str | None) -> str | None:
        return None if value is None else check_calendar(value.strip())

    @field_validator("cors_origins")
    @classmethod
    def _without_trailing_slash(cls, value: list[str]) -> list[str]:
        # browsers send Origin without a path; "https://a.example/" would never match
        return [origin.rstrip("/") for origin in value]

    @model_validator(mode="after")
    def _room_beside_the_streams(self) -> ApiSettings:
        if self.api_limit_concurrency <= self.api_max_streams:
            raise ValueError(
                "api_limit_concurrency must exceed api_max_streams (requests need room too)"
            )
        return self

    @model_validator(mode="after")
    def _no_client_holds_everything(self) -> ApiSettings:
        shares = (
            ("api_max_streams_per_client", "api_max_streams"),
            ("api_history_concurrency_per_client", "api_history_concurrency"),
            ("api_pool_size_per_client", "api_pool_size"),
        )
        for share, whole in shares:
            if getattr(self, share) < getattr(self, whole):
                continue
            if share in self.model_fields_set:
                raise ValueError(
                    f"{share} must be less than {whole} (one client must never hold them all)"
                )
            # a default share that does not fit a smaller whole: half of it
            setattr(self, share, max(1, getattr(self, whole) // 2))
        return self
