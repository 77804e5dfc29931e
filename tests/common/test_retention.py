"""The retention settings: the owner's to apply, read the same way here and by the database."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest
from pydantic import ValidationError

from services.common.retention import (
    DEFAULT_MINUTE,
    DEFAULT_RAW,
    RetentionSettings,
    interval_input,
    set_retention,
)

# The formats the settings document, each as the settings read it.
FORMATS = [
    ("86400", timedelta(days=1)),
    ("36h", timedelta(hours=36)),
    ("7d", timedelta(days=7)),
    ("2w", timedelta(weeks=2)),
    ("1.5d", timedelta(days=1.5)),
    ("2880m", timedelta(days=2)),
    ("P30D", timedelta(days=30)),
    ("PT36H", timedelta(hours=36)),
    ("P1DT12H", timedelta(hours=36)),
]


def test_defaults() -> None:
    settings = RetentionSettings()
    assert (settings.retention, settings.retention_minute) == (DEFAULT_RAW, DEFAULT_MINUTE)
    assert (DEFAULT_RAW, DEFAULT_MINUTE) == (timedelta(days=30), timedelta(days=400))


@pytest.mark.parametrize(("value", "expected"), FORMATS)
def test_formats(monkeypatch: pytest.MonkeyPatch, value: str, expected: timedelta) -> None:
    monkeypatch.setenv("STOCKSTREAMER_RETENTION", value)
    monkeypatch.setenv("STOCKSTREAMER_RETENTION_MINUTE", "3650d")
    assert RetentionSettings().retention == expected


@pytest.mark.parametrize(
    ("raw", "minute", "message"),
    [
        ("12h", "400d", "at least 1 day"),
        ("30d", "0", "at least 1 day"),
        ("a week", "400d", "retention"),
        ("30d", "7d", "retention_minute must not be shorter than retention"),
    ],
)
def test_bad_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, raw: str, minute: str, message: str
) -> None:
    monkeypatch.setenv("STOCKSTREAMER_RETENTION", raw)
    monkeypatch.setenv("STOCKSTREAMER_RETENTION_MINUTE", minute)
    with pytest.raises(ValidationError, match=message):
        RetentionSettings()


@pytest.mark.parametrize(("value", "expected"), FORMATS)
async def test_the_database_reads_each_format_as_the_settings_do(
    db: asyncpg.Connection, value: str, expected: timedelta
) -> None:
    """db/users.sql hands the setting to the database as written; `make run` as seconds."""
    keep = "SELECT keep FROM partition_policy WHERE parent = 'ticks'"
    await db.execute("CALL stockstreamer_set_retention($1, '3650d')", value)
    as_written = await db.fetchval(keep)
    await set_retention(db, expected, timedelta(days=3650))
    assert as_written == await db.fetchval(keep) == expected
    assert interval_input(expected) == str(expected.total_seconds())
