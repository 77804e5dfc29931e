"""Alerts service settings, from the environment and `.env`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from services.common.config import CommonSettings, DbRole


class AlertsSettings(CommonSettings):
    """Every `STOCKSTREAMER_*` setting the alerts service reads."""

    alert_channels_file: Path | None = Field(
        None,
        description="YAML file naming the delivery channels: name → Apprise URL (a secret; "
        "without it, or empty, only the built-in `browser` channel).",
    )
    alert_rearm_pct: float = Field(
        0.2,
        ge=0,
        le=50,
        description="Percent the price must come back past a fired alert's line before it "
        "re-arms, so a price hovering at the line fires once.",
    )
    alert_batch_size: int = Field(
        1000, ge=1, le=100_000, description="Most ticks read and evaluated in one transaction."
    )
    alert_delivery_attempts: int = Field(
        5, ge=1, le=50, description="Attempts to deliver a firing to one channel before giving up."
    )
    alert_delivery_concurrency: int = Field(
        8, ge=1, le=256, description="Deliveries in flight at once (each holds a thread)."
    )
    alert_retry_wait_initial: float = Field(
        1.0, ge=0, description="Wait before the second delivery attempt, seconds (then doubled)."
    )
    alert_retry_wait_max: float = Field(
        60.0, ge=0, description="Longest wait between two delivery attempts, seconds."
    )
    alerts_shutdown_timeout: float = Field(
        8.0,
        gt=0,
        le=60,
        description="Seconds deliveries in flight may take to finish on SIGTERM (the rest are "
        "redelivered at the next start).",
    )
    alerts_host: str = Field(
        "127.0.0.1", description="Address of the /metrics, /healthz and /readyz listener."
    )
    alerts_port: int = Field(9102, ge=0, le=65535, description="Port of /metrics (0: random).")
    alerts_db_role: DbRole = Field(
        "stockstreamer_alerter",
        description="Role the alerts service switches to on connect; `none` keeps the login user.",
    )

    @model_validator(mode="after")
    def _waits_in_order(self) -> AlertsSettings:
        if self.alert_retry_wait_max < self.alert_retry_wait_initial:
            raise ValueError(
                "STOCKSTREAMER_ALERT_RETRY_WAIT_MAX must be at least "
                "STOCKSTREAMER_ALERT_RETRY_WAIT_INITIAL"
            )
        return self
