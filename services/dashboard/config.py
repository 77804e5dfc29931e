"""Dashboard settings, from the environment and `.env`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from services.common.config import CommaList, CommonSettings, trusted_proxies_field

WindowName = Literal["1h", "1d", "1w", "1m", "1y"]


class DashboardSettings(CommonSettings):
    """Every `STOCKSTREAMER_*` setting the dashboard reads."""

    dashboard_host: str = Field("127.0.0.1", description="Address the Bokeh server listens on.")
    dashboard_port: int = Field(5006, ge=0, le=65535, description="Port of the Bokeh server.")
    allowed_origins: CommaList = Field(
        default_factory=list,
        description="Comma-separated host[:port] allowed to open the websocket "
        "(default: localhost and 127.0.0.1 on the dashboard port).",
    )
    api_url: str = Field("http://127.0.0.1:8000", description="Base URL of the stockstreamer API.")
    dashboard_window: WindowName = Field("1h", description="Window shown when a page opens.")
    dashboard_max_points: int = Field(
        1000, ge=10, le=10_000, description="Most points per line (history and live)."
    )
    dashboard_max_sessions: int = Field(
        200,
        ge=1,
        le=100_000,
        description="Connected browser sessions (open WebSocket) one process serves; beyond, a "
        "page asks to come back later.",
    )
    dashboard_page_rate: float = Field(
        0.5,
        gt=0,
        le=1000,
        description="Page loads per second one client address may make on average; beyond, "
        "it is answered 429 with Retry-After.",
    )
    dashboard_page_burst: int = Field(
        10, ge=1, le=10_000, description="Page loads one client address may make at once."
    )
    dashboard_max_pending_pages: int = Field(
        8,
        ge=1,
        le=1000,
        description="Page loads being built or waiting to be at once; beyond, a page is "
        "answered 503 with Retry-After at once instead of waiting in line.",
    )
    dashboard_unused_session_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds a session is kept without an open WebSocket (a page that never "
        "connected, or a closed tab).",
    )
    trusted_proxies: CommaList = trusted_proxies_field()
    dashboard_reconnect_max: float = Field(
        5.0, gt=0, le=300, description="Longest wait, seconds, between stream reconnects."
    )
    dashboard_api_timeout: float = Field(
        5.0, gt=0, le=120, description="Seconds before a REST call to the API gives up."
    )
    dashboard_api_token: SecretStr | None = Field(
        None,
        description="An API write token: with one (here or in dashboard_api_token_file) the page "
        "can add and remove stocks, relayed to the API with it (it never reaches the browser).",
    )
    dashboard_api_token_file: Path | None = Field(
        None,
        description="A file holding the API write token (its first line); a secret file, read at "
        "start. Used when dashboard_api_token is not set.",
    )

    @field_validator("api_url")
    @classmethod
    def _check_api_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("api_url must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _token_from_file(self) -> DashboardSettings:
        if self.dashboard_api_token is None and self.dashboard_api_token_file is not None:
            path = self.dashboard_api_token_file
            try:
                lines = path.read_text().splitlines()
            except OSError as exc:  # a clear settings error, not a traceback
                raise ValueError(
                    f"dashboard_api_token_file: cannot read {path}: {exc.strerror}"
                ) from None
            # the first line that is not blank or a comment, as the API reads its tokens file
            tokens = [t.strip() for t in lines if t.strip() and not t.strip().startswith("#")]
            if not tokens:
                raise ValueError(f"dashboard_api_token_file: {path} holds no token")
            self.dashboard_api_token = SecretStr(tokens[0])
        return self

    def write_token(self) -> str | None:
        """The token the dashboard's writes present, or None: the page cannot change anything."""
        token = self.dashboard_api_token
        return token.get_secret_value().strip() or None if token is not None else None

    @model_validator(mode="after")
    def _default_origins(self) -> DashboardSettings:
        if not self.allowed_origins:
            port = self.dashboard_port
            self.allowed_origins = [f"localhost:{port}", f"127.0.0.1:{port}"]
        return self
