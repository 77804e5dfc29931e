"""Vendor settings: keys from env or files and never shown, backfill windows, base URLs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.fetcher.config import HAS_HISTORY, PROVIDER_NAMES, FetcherSettings
from services.fetcher.providers import (
    FinnhubProvider,
    SimulatedProvider,
    TwelveDataProvider,
    create_provider,
    create_providers,
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
    for bad in ("-1", "a week", "7y", "401d"):
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
    both = FetcherSettings(provider="finnhub,twelvedata")
    assert isinstance(create_provider(both, "twelvedata"), TwelveDataProvider)


def test_a_chain_is_ordered_and_deduplicated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINNHUB_API_KEY", "k1")
    monkeypatch.setenv("TWELVEDATA_API_KEY", "k2")
    monkeypatch.setenv("STOCKSTREAMER_PROVIDER", " Finnhub, twelvedata ,finnhub,simulated")
    settings = FetcherSettings()
    assert settings.providers == ["finnhub", "twelvedata", "simulated"]
    assert settings.history_provider == "twelvedata"  # the first with history: not Finnhub
    assert settings.calendar == "XNYS"  # a vendor in the chain: US market hours
    chain, history = create_providers(settings)
    assert [type(p) for p in chain] == [FinnhubProvider, TwelveDataProvider, SimulatedProvider]
    assert history is chain[1]  # the chain's own instance


def test_a_history_provider_outside_the_chain_needs_its_keys_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FINNHUB_API_KEY", "k1")
    monkeypatch.setenv("STOCKSTREAMER_PROVIDER", "finnhub")
    assert FetcherSettings().history_provider is None  # Finnhub's free tier has no history
    monkeypatch.setenv("STOCKSTREAMER_HISTORY_PROVIDER", "twelvedata")
    with pytest.raises(ValidationError, match="provider twelvedata needs TWELVEDATA_API_KEY"):
        FetcherSettings()
    monkeypatch.setenv("TWELVEDATA_API_KEY", "k2")
    chain, history = create_providers(FetcherSettings())
    assert [type(p) for p in chain] == [FinnhubProvider]
    assert isinstance(history, TwelveDataProvider)
    monkeypatch.setenv("STOCKSTREAMER_HISTORY_PROVIDER", "finnhub")
    with pytest.raises(ValidationError, match="finnhub has no history"):
        FetcherSettings()


def test_alpaca_needs_both_keys_from_env_or_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STOCKSTREAMER_PROVIDER", "alpaca")
    with pytest.raises(ValidationError, match="ALPACA_API_KEY_ID and ALPACA_API_SECRET_KEY"):
        FetcherSettings()
    (tmp_path / "secret").write_text("alpaca-secret-from-file\n")
    monkeypatch.setenv("ALPACA_API_KEY_ID", "alpaca-id")
    monkeypatch.setenv("ALPACA_API_SECRET_KEY_FILE", str(tmp_path / "secret"))
    settings = FetcherSettings()
    assert settings.alpaca_api_secret_key is not None
    assert settings.alpaca_api_secret_key.get_secret_value() == "alpaca-secret-from-file"
    assert settings.history_provider == "alpaca" and settings.calendar == "XNYS"
    assert "alpaca-secret" not in repr(settings) + settings.model_dump_json()


def test_the_simulator_alone_never_closes_but_a_calendar_can_be_chosen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert FetcherSettings().calendar == "24/7"
    monkeypatch.setenv("STOCKSTREAMER_CALENDAR", "XLON")
    monkeypatch.setenv("STOCKSTREAMER_EXTENDED_HOURS", "true")
    settings = FetcherSettings()
    assert (settings.calendar, settings.extended_hours) == ("XLON", True)
    with pytest.raises(ValidationError, match="failover_after"):
        FetcherSettings(failover_after=0)


def test_the_history_table_matches_the_providers() -> None:
    for provider in (SimulatedProvider, FinnhubProvider, TwelveDataProvider):
        assert HAS_HISTORY[provider.name] is provider.has_history, provider.name
    assert set(HAS_HISTORY) == set(PROVIDER_NAMES)
