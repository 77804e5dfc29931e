"""API settings, from the environment and `.env`."""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from services.common.config import CommaList, CommonSettings, DbRole, trusted_proxies_field
from services.common.cpus import available_cpus
from services.common.market import check_calendar

MIN_TOKEN_LENGTH = 16  # a shorter token is guessable within the failure limit's patience

# The per-client limits are each worker process's own (see ApiSettings.worker_share).
_PER_WORKER = (
    " Counted by each worker process on its own (a client's connections are spread over the "
    "workers), and at most one less than that worker's share of the whole."
)


class ApiSettings(CommonSettings):
    """Every `STOCKSTREAMER_*` setting the API reads."""

    api_host: str = Field("127.0.0.1", description="Address the API listens on.")
    api_port: int = Field(8000, ge=0, le=65535, description="Port the API listens on (0: random).")
    api_workers: int | None = Field(
        None,
        ge=1,
        le=256,
        description="API worker processes, all serving the one port (the kernel spreads "
        "connections over them); unset: the CPUs available (the process's CPU affinity, bounded "
        "by its container's CPU quota, rounded up). Each has its own event loop, database pool and "
        "LISTEN connection, and its share of the API's caps; 1 runs a single process.",
    )
    api_db_role: DbRole = Field(
        "stockstreamer_editor",
        description="Role the API switches to on connect (the editor reads everything and "
        "writes only the watchlist and alerts); `none` keeps the login user.",
    )
    api_pool_size: int = Field(
        20,
        ge=2,
        le=100,
        description="Most pooled database connections. With several workers (api_workers) this "
        "is the whole API's: each worker gets an equal share, rounded down, at least 2, and holds "
        "one LISTEN connection besides.",
    )
    api_pool_size_per_client: int = Field(
        5,
        ge=1,
        le=99,
        description="Pooled connections one client address holds at once (less than "
        "api_pool_size; by default at most half of it); beyond, a request waits a second for "
        "one of its own, then 429." + _PER_WORKER,
    )
    api_token: SecretStr | None = Field(
        None,
        description="A token that write requests present (Authorization: Bearer); with none "
        "here or in api_tokens_file, writes are refused (403). At least 16 characters.",
    )
    api_tokens_file: Path | None = Field(
        None,
        description="A file of tokens, one a line (blank lines and # comments skipped), for "
        "writes; a secret file, read at start.",
    )
    api_auth_failures_per_minute: int = Field(
        10,
        ge=1,
        le=10_000,
        description="Failed token attempts one client address may make a minute; beyond, 429.",
    )
    api_read_token_required: bool = Field(
        False,
        description="Whether reads (REST and the stream, not health and metrics) need a token "
        "too, as writes do; needs api_token or api_tokens_file.",
    )
    max_symbols: int = Field(
        50,
        ge=1,
        le=10_000,
        description="Most symbols in the watchlist (rejected ones not counted); adding one more "
        "is refused with 409. The fetcher reads the same setting.",
    )
    max_alerts: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Most alerts in force at once; creating one more is refused with 409.",
    )
    api_statement_timeout: float = Field(
        5.0, gt=0, le=300, description="Seconds any one query may run before it is cancelled (503)."
    )
    api_history_concurrency: int = Field(
        8,
        ge=2,
        le=100,
        description="History requests served at once; beyond: 503 + Retry-After. With several "
        "workers (api_workers) this is the whole API's: each worker gets an equal share, rounded "
        "down, at least 1 and less than its share of api_pool_size (each read holds a pooled "
        "connection; one is left for the other requests).",
    )
    api_history_concurrency_per_client: int = Field(
        2,
        ge=1,
        le=99,
        description="History requests (prices, bars, stream replays) one client address has "
        "served at once (less than api_history_concurrency; by default at most half of it); "
        "beyond, a request waits a second for one of its own, then 429." + _PER_WORKER,
    )
    api_history_rate: float = Field(
        10.0,
        gt=0,
        le=10_000,
        description="History requests (prices, bars, stream replays) a second one client address "
        "may make on average; beyond: 429 + Retry-After. Counted by each worker process on its "
        "own (a client's connections are spread over the workers).",
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
        12_000,
        ge=2,
        le=100_000,
        description="Event streams open at once; beyond: 503 + Retry-After. With several workers "
        "(api_workers) this is the whole API's: each worker takes an equal share, rounded up "
        "(the default leaves room beyond 10,000 for an uneven spread over the workers).",
    )
    api_max_streams_per_client: int = Field(
        20,
        ge=1,
        le=99_999,
        description="Event streams one client address holds open (less than api_max_streams; by "
        "default at most half of it); beyond: 429 + Retry-After." + _PER_WORKER,
    )
    api_limit_concurrency: int = Field(
        14_000,
        ge=2,
        le=200_000,
        description="Connections and requests uvicorn serves at once (streams included); "
        "beyond: 503. With several workers (api_workers) this is the whole API's: each worker "
        "takes an equal share, rounded up (and more than its share of api_max_streams). Each "
        "connection is an open file: every API process raises its open-file limit as far as "
        "its hard limit allows.",
    )
    api_shutdown_timeout: float = Field(
        5.0, gt=0, le=60, description="Seconds open requests get to finish on SIGTERM."
    )
    api_keep_alive: float = Field(
        5.0,
        gt=0,
        le=86_400,
        description="Seconds an idle client connection is kept open for its next request; behind "
        "a load balancer, longer than the balancer's own idle timeout (so it never reuses a "
        "connection the API is closing).",
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

    def worker_count(self) -> int:
        """The worker processes to run: api_workers, or one per CPU available."""
        return self.api_workers or available_cpus()

    def worker_share(self, workers: int) -> ApiSettings:
        """The settings of one of `workers` processes: its share of each of the API's caps.

        Streams and connections: an equal share, rounded up (the kernel spreads connections
        evenly, give or take). Pooled connections: rounded down, at least 2, so that the
        workers' pools and their LISTEN connections add up to what the database login allows
        (compose's pool of 7 on two workers: 2 x (3 + 1) = 8 connections, as one process's 7 + 1
        was). History reads: rounded down, less than the worker's pool (each read holds one).
        Per-client limits stay each worker's own, less than its share of the whole.
        """
        if workers == 1:
            return self.model_copy(update={"api_workers": 1})
        streams = math.ceil(self.api_max_streams / workers)
        pool = max(2, self.api_pool_size // workers)
        history = max(1, min(self.api_history_concurrency // workers, pool - 1))
        update: dict[str, int] = {
            "api_workers": workers,
            "api_max_streams": streams,
            "api_limit_concurrency": max(
                math.ceil(self.api_limit_concurrency / workers), streams + 1
            ),
            "api_pool_size": pool,
            "api_history_concurrency": history,
        }
        for share, whole in _SHARES:
            update[share] = max(1, min(getattr(self, share), update[whole] - 1))
        return self.model_copy(update=update)

    @field_validator("calendar")
    @classmethod
    def _known_calendar(cls, value: str | None) -> str | None:
        return None if value is None else check_calendar(value.strip())

    @field_validator("cors_origins")
    @classmethod
    def _without_trailing_slash(cls, value: list[str]) -> list[str]:
        # browsers send Origin without a path; "https://a.example/" would never match
        return [origin.rstrip("/") for origin in value]

    def write_tokens(self) -> list[str]:
        """The tokens writes may present: api_token, then a line each from api_tokens_file."""
        found = [self.api_token.get_secret_value().strip()] if self.api_token else []
        if self.api_tokens_file is not None:
            for line in self.api_tokens_file.read_text().splitlines():
                text = line.strip()
                if text and not text.startswith("#"):
                    found.append(text)
        return [t for t in found if t]

    @model_validator(mode="after")
    def _tokens_usable(self) -> ApiSettings:
        try:
            tokens = self.write_tokens()
        except OSError as exc:  # a clear settings error, not a traceback
            raise ValueError(f"api_tokens_file: cannot read it: {exc.strerror}") from None
        if any(len(t) < MIN_TOKEN_LENGTH for t in tokens):
            raise ValueError(f"API tokens must be at least {MIN_TOKEN_LENGTH} characters long")
        if self.api_read_token_required and not tokens:
            # otherwise every read would be refused: a configuration error, said at start
            raise ValueError("api_read_token_required needs a token (api_token or api_tokens_file)")
        return self

    @model_validator(mode="after")
    def _room_beside_the_streams(self) -> ApiSettings:
        if self.api_limit_concurrency <= self.api_max_streams:
            raise ValueError(
                "api_limit_concurrency must exceed api_max_streams (requests need room too)"
            )
        return self

    @model_validator(mode="after")
    def _no_client_holds_everything(self) -> ApiSettings:
        for share, whole in _SHARES:
            if getattr(self, share) < getattr(self, whole):
                continue
            if share in self.model_fields_set:
                raise ValueError(
                    f"{share} must be less than {whole} (one client must never hold them all)"
                )
            # a default share that does not fit a smaller whole: half of it
            setattr(self, share, max(1, getattr(self, whole) // 2))
        return self


# Each per-client limit and the whole it is a share of.
_SHARES = (
    ("api_max_streams_per_client", "api_max_streams"),
    ("api_history_concurrency_per_client", "api_history_concurrency"),
    ("api_pool_size_per_client", "api_pool_size"),
)
