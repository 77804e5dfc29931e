"""Fetcher settings: defaults, parsing, and clear errors for bad values."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from services.fetcher.config import FetcherSettings
from services.runner.processes import ROOT


def test_defaults() -> None:
    settings = FetcherSettings()
    assert settings.symbols == ["GE", "AMZN", "NVDA", "INTC", "AAPL", "NFLX"]
    assert settings.provider == settings.providers == ["simulated"]
    assert settings.history_provider == "simulated"
    assert settings.calendar == "24/7"  # the simulator alone never closes
    assert settings.metadata_interval == 6 * 3600
    assert settings.buffer_capacity >= 1_000_000


def test_symbols_from_env_are_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKSTREAMER_SYMBOLS", " aapl, BRK.B ,AAPL,msft ")
    assert FetcherSettings().symbols == ["AAPL", "BRK.B", "MSFT"]


@pytest.mark.parametrize("value", ["AAPL,bad$", "AAPL,TOOLONGSYMBOL", ",", "1ABC"])
def test_invalid_symbols_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("STOCKSTREAMER_SYMBOLS", value)
    with pytest.raises(ValidationError, match="symbol"):
        FetcherSettings()


def test_dotenv_is_read(tmp_path_factory: pytest.TempPathFactory) -> None:
    # the autouse fixture chdirs into an empty temp dir; settings read `.env` from there
    with open(".env", "w") as fh:
        fh.write("STOCKSTREAMER_SYMBOLS=NVDA\nSTOCKSTREAMER_PRICE_INTERVAL=0.5\n")
    settings = FetcherSettings()
    assert settings.symbols == ["NVDA"] and settings.price_interval == 0.5


def test_database_url_from_file(monkeypatch: pytest.MonkeyPatch) -> None:
    with open("db-url", "w") as fh:
        fh.write("postgresql://u:secret@db:5432/x\n")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL_FILE", "db-url")
    settings = FetcherSettings()
    assert settings.database_url == "postgresql://u:secret@db:5432/x"
    assert "secret" not in repr(settings)


def test_invalid_symbol_is_a_clear_startup_error() -> None:
    env = {"STOCKSTREAMER_SYMBOLS": "AAPL,no good", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "services.fetcher"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "invalid symbol 'no good'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("value", "role"), [("none", None), ("NONE", None), ("me", "me")])
def test_db_role_none_keeps_the_login_user(
    monkeypatch: pytest.MonkeyPatch, value: str, role: str | None
) -> None:
    monkeypatch.setenv("STOCKSTREAMER_FETCHER_DB_ROLE", value)
    assert FetcherSettings().fetcher_db_role == role
    assert FetcherSettings(fetcher_db_role="").fetcher_db_role is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STOCKSTREAMER_PROVIDER": "finnhub,iex"}, "unknown provider 'iex'"),
        (
            {"STOCKSTREAMER_PROVIDER": "alpaca,simulated", "ALPACA_API_KEY_ID": "id"},
            "provider alpaca needs ALPACA_API_SECRET_KEY (or ALPACA_API_SECRET_KEY_FILE)",
        ),
        ({"STOCKSTREAMER_HISTORY_PROVIDER": "finnhub"}, "finnhub has no history"),
        ({"STOCKSTREAMER_CALENDAR": "MOON"}, "unknown calendar 'MOON'"),
        ({"STOCKSTREAMER_BACKFILL": "500d"}, "at most 400 days"),
    ],
)
def test_a_bad_chain_is_a_clear_startup_error(env: dict[str, str], message: str) -> None:
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "services.fetcher"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
