"""Shared settings: secrets from files (read again for each connection), errors without values."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.common.config import CommonSettings
from services.common.db import create_pool
from services.runner.processes import ServiceProcess
from tests.utils.postgres import create_database, drop_database


def test_a_settings_error_names_the_setting_and_never_shows_a_value() -> None:
    secrets = ("sk-very-secret-key", "hunter2")
    env = {
        "STOCKSTREAMER_PROVIDER": "finnhub",
        "FINNHUB_API_KEY": secrets[0],
        "DATABASE_URL": f"postgresql://app:{secrets[1]}@db/x",
        "STOCKSTREAMER_PRICE_INTERVAL": "-1",
        "STOCKSTREAMER_FINNHUB_RATE_LIMIT": secrets[0],  # a secret pasted into the wrong setting
    }
    proc = ServiceProcess("services.fetcher", env).start()
    assert proc.wait(30) == 2
    assert "price_interval" in proc.output and "finnhub_rate_limit" in proc.output
    assert not any(secret in proc.output for secret in secrets), proc.output
    assert "Traceback" not in proc.output


def test_an_unreadable_url_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "database-url"
    proc = ServiceProcess("services.api", {"DATABASE_URL_FILE": str(missing)}).start()
    assert proc.wait(30) == 2
    assert f"DATABASE_URL_FILE: cannot read {missing}" in proc.output
    assert "Traceback" not in proc.output


def test_a_direct_url_wins_over_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    Path("url").write_text("postgresql://file/x\n")
    monkeypatch.setenv("DATABASE_URL_FILE", "url")
    monkeypatch.setenv("DATABASE_URL", "postgresql://direct/x")
    settings = CommonSettings()
    assert settings.database_url_now() == "postgresql://direct/x"
    assert settings.database_url_file is None


async def test_each_new_connection_reads_the_url_file_again(
    monkeypatch: pytest.MonkeyPatch, database_url: str, pg_admin_url: str
) -> None:
    """Rotated credentials take effect without a restart: here, the file moves to another db."""
    other = await create_database(pg_admin_url)
    url_file = Path("database-url")
    url_file.write_text(database_url + "\n")
    monkeypatch.setenv("DATABASE_URL_FILE", str(url_file))
    settings = CommonSettings()
    pool = await create_pool(settings.database_url_now, min_size=0, max_size=1)
    try:
        first = await pool.fetchval("SELECT current_database()")
        url_file.write_text(other + "\n")  # rewritten in place, as a rotation does
        await pool.expire_connections()
        second = await pool.fetchval("SELECT current_database()")
    finally:
        await asyncio.wait_for(pool.close(), 5)
        await drop_database(other)
    assert first == database_url.rsplit("/", 1)[1].split("?")[0]
    assert second == other.rsplit("/", 1)[1].split("?")[0]
