"""How long data is kept: the database owner's settings, stored in `partition_policy`.

The fetcher only applies what is stored there (`stockstreamer_apply_retention()` takes no
arguments), so the login that writes can never shorten it; the owner sets it: compose's
`db-users` one-shot and `make run` / `make migrate`, both through db/users.sql's procedure.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg
from pydantic import Field, field_validator, model_validator

from services.common.config import CommonSettings, Duration

DEFAULT_RAW = timedelta(days=30)
DEFAULT_MINUTE = timedelta(days=400)
# Owner only: the procedure checks the values again (at least a day, minute bars outlive ticks).
SET_RETENTION = "CALL stockstreamer_set_retention($1, $2)"


class RetentionSettings(CommonSettings):
    """What the database's owner applies after migrating (db/users.sql's `retention` variables)."""

    retention: Duration = Field(
        DEFAULT_RAW,
        description="How long raw ticks (and 10 s bars) are kept; older ones go a day at a time.",
    )
    retention_minute: Duration = Field(
        DEFAULT_MINUTE,
        description="How long 1 to 30 minute bars are kept (hourly and daily bars: forever).",
    )

    @field_validator("retention", "retention_minute")
    @classmethod
    def _at_least_a_day(cls, value: timedelta) -> timedelta:
        if value < timedelta(days=1):
            raise ValueError("must be at least 1 day (data is dropped a whole day at a time)")
        return value

    @model_validator(mode="after")
    def _minute_bars_outlive_ticks(self) -> RetentionSettings:
        if self.retention_minute < self.retention:
            raise ValueError("retention_minute must not be shorter than retention")
        return self


def interval_input(value: timedelta) -> str:
    """`value` as PostgreSQL's interval input (and db/users.sql) reads it: plain seconds."""
    return str(value.total_seconds())


async def set_retention(conn: asyncpg.Connection, raw: timedelta, minute: timedelta) -> None:
    """Store how long raw ticks and minute bars are kept; `conn` must be the tables' owner."""
    await conn.execute(SET_RETENTION, interval_input(raw), interval_input(minute))
