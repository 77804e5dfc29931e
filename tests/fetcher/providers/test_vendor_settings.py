"""Vendor settings: keys from env or files and never shown, backfill windows, base URLs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.fetcher.config import FetcherSettings
from services.fetcher.providers import (
    FinnhubProvider,
    SimulatedProvider,
    TwelveDataProvider,
    create_provider,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        ("1w", timedelta(weeks=1)),
        ("3600", timedelta(hours=1)),
        ("P2D", timedelta(days=2)),
        ("PT90M", timedelta(minutes=90)),
        ("0", timedelta(0)),
    ],
)
def test_backfill_windows(monkeypatch: pytest.MonkeyPatch, value: str, expected: timedelta) -> None:
    monkeypatch.setenv("STOCKSTREAMER_BACKFILL", value)
    assert FetcherSettings().backfill == expected


def test_backfill_defaults_to_a_year_and_refuses_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    assert FetcherSettings().backfill == timedelta(days=365)
    for bad in ("-1", "a week", "7y"):
        monkeypatch.setenv("STOCKSTREAMER_BACKFILL", bad)
        with pytest.raises(ValidationError, match="backfill"):
            FetcherSettings()


def test_a_vendor_needs_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKSTREAMER_PROVIDER", "finnhub")
    with pytest.raises(ValidationError, match="FINNHUB_API_KEY"):
        FetcherSettings()
    monkeypatch.setenv("STOCKSTREAMER_PROVIDER", "twelvedata")
    with pytest.raises(ValidationError, match="TWELVEDATA_API_KEY"):
        FetcherSettings()
    monkeypatch.setenv("STOCKSTREAMER_PROVIDER", "iex")
    with pytest.raises(ValidationError, match="provider"):
        FetcherSettings()


def test_keys_from_env_or_files_are_never_shown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "td").write_text("td-secret-from-file\n")
    monkeypatch.setenv("STOCKSTREAMER_PROVIDER", "finnhub")
    monkeypatch.setenv("FINNHUB_API_KEY", "fh-secret-from-env")
    monkeypatch.setenv("TWELVEDATA_API_KEY_FILE", str(tmp_path / "td"))
    settings = FetcherSettings()
    assert settings.finnhub_api_key is not None and settings.twelvedata_api_key is not None
    assert settings.finnhub_api_key.get_secret_value() == "fh-secret-from-env"
    assert settings.twelvedata_api_key.get_secret_value() == "td-secret-from-file"
    shown = repr(settings) + str(settings) + str(settings.model_dump()) + settings.model_dump_json()
    assert "secret-from" not in shown


def test_the_key_file_is_used_only_without_a_direct_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "fh").write_text("from-file")
    monkeypatch.setenv("FINNHUB_API_KEY_FILE", str(tmp_path / "fh"))
    assert FetcherSettings().finnhub_api_key.get_secret_value() == "from-file"  # type: ignore[union-attr]
    monkeypatch.setenv("FINNHUB_API_KEY", "direct")
    assert FetcherSettings().finnhub_api_key.get_secret_value() == "direct"  # type: ignore[union-attr]


def test_an_unreadable_key_file_is_a_settings_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TWELVEDATA_API_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match="TWELVEDATA_API_KEY_FILE: cannot read"):
        FetcherSettings()


def test_the_provider_setting_picks_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(create_provider(FetcherSettings()), SimulatedProvider)
    monkeypatch.setenv("FINNHUB_API_KEY", "k1")
    monkeypatch.setenv("TWELVEDATA_API_KEY", "k2")
    assert isinstance(create_provider(FetcherSettings(provider="finnhub")), FinnhubProvider)
    assert isinstance(create_provider(FetcherSettings(provider="twelvedata")), TwelveDataProvider)
