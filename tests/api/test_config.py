"""API settings: defaults, environment names, CORS list parsing, the market before a feed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.api.config import ApiSettings
from services.api.feed import Feed


def configured(settings: ApiSettings) -> Feed:
    return Feed.configured(settings.provider, settings.calendar, settings.extended_hours)


def test_defaults() -> None:
    settings = ApiSettings()
    assert (settings.api_host, settings.api_port) == ("127.0.0.1", 8000)
    assert settings.api_db_role == "stockstreamer_editor"
    assert settings.cors_origins == []
    assert settings.api_stream_heartbeat == 15
    assert (settings.max_symbols, settings.max_alerts) == (50, 1000)
    assert settings.api_read_token_required is False


def test_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKSTREAMER_API_PORT", "8100")
    monkeypatch.setenv("STOCKSTREAMER_CORS_ORIGINS", "http://localhost:5006/, https://a.example")
    monkeypatch.setenv("STOCKSTREAMER_API_STREAM_QUEUE_SIZE", "8")
    monkeypatch.setenv("STOCKSTREAMER_API_DB_ROLE", "none")
    monkeypatch.setenv("STOCKSTREAMER_MAX_SYMBOLS", "30")
    monkeypatch.setenv("STOCKSTREAMER_MAX_ALERTS", "5")
    settings = ApiSettings()
    assert settings.api_port == 8100 and settings.api_stream_queue_size == 8
    assert (settings.max_symbols, settings.max_alerts) == (30, 5)
    assert settings.cors_origins == ["http://localhost:5006", "https://a.example"]
    assert settings.api_db_role is None  # `none`: stay the login user


def test_the_market_the_settings_describe(monkeypatch: pytest.MonkeyPatch) -> None:
    simulated = configured(ApiSettings())
    monkeypatch.setenv("STOCKSTREAMER_PROVIDER", "Alpaca, finnhub")
    vendor = configured(ApiSettings())
    monkeypatch.setenv("STOCKSTREAMER_CALENDAR", "XLON")
    monkeypatch.setenv("STOCKSTREAMER_EXTENDED_HOURS", "true")
    london = configured(ApiSettings())
    assert (simulated.chain, simulated.calendar, simulated.collapse_closed) == (
        ("simulated",),
        "24/7",
        False,
    )
    assert (vendor.chain, vendor.calendar, vendor.collapse_closed) == (
        ("alpaca", "finnhub"),
        "XNYS",
        True,
    )
    assert (london.calendar, london.extended_hours) == ("XLON", True)


def test_an_unknown_calendar_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKSTREAMER_CALENDAR", "NYSE-ISH")
    with pytest.raises(ValidationError, match="calendar") as refused:
        ApiSettings()
    assert "unknown calendar 'NYSE-ISH'" in str(refused.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("STOCKSTREAMER_API_PORT", "70000"), ("STOCKSTREAMER_API_STREAM_HEARTBEAT", "0")],
)
def test_rejects_bad_values(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        ApiSettings()


def test_per_client_limits_and_trusted_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ApiSettings()
    assert settings.trusted_proxies == []  # nobody's X-Forwarded-For is believed
    assert settings.api_max_streams_per_client < settings.api_max_streams
    assert settings.api_history_concurrency_per_client < settings.api_history_concurrency
    assert settings.api_pool_size_per_client < settings.api_pool_size
    monkeypatch.setenv("STOCKSTREAMER_TRUSTED_PROXIES", "proxy, dashboard,10.0.0.0/8")
    monkeypatch.setenv("STOCKSTREAMER_API_HISTORY_RATE", "2.5")
    settings = ApiSettings()
    assert settings.trusted_proxies == ["proxy", "dashboard", "10.0.0.0/8"]
    assert settings.api_history_rate == 2.5


def test_a_default_share_fits_a_smaller_whole() -> None:
    settings = ApiSettings(api_pool_size=4, api_history_concurrency=2, api_max_streams=10)
    assert settings.api_pool_size_per_client == 2
    assert settings.api_history_concurrency_per_client == 1
    assert settings.api_max_streams_per_client == 5


@pytest.mark.parametrize(
    ("share", "whole"),
    [
        ("STOCKSTREAMER_API_POOL_SIZE_PER_CLIENT", "STOCKSTREAMER_API_POOL_SIZE"),
        (
            "STOCKSTREAMER_API_HISTORY_CONCURRENCY_PER_CLIENT",
            "STOCKSTREAMER_API_HISTORY_CONCURRENCY",
        ),
        ("STOCKSTREAMER_API_MAX_STREAMS_PER_CLIENT", "STOCKSTREAMER_API_MAX_STREAMS"),
    ],
)
def test_one_client_may_never_be_given_everything(
    monkeypatch: pytest.MonkeyPatch, share: str, whole: str
) -> None:
    monkeypatch.setenv(whole, "6")
    monkeypatch.setenv(share, "6")
    with pytest.raises(ValidationError, match="one client must never hold them all"):
        ApiSettings()


def test_the_defaults_admit_ten_thousand_streams_on_any_number_of_workers() -> None:
    settings = ApiSettings()
    for workers in (1, 2, 4, 8):
        share = settings.worker_share(workers)
        # an uneven spread over the workers (a few percent at 10,000) still fits
        assert share.api_max_streams * workers >= 10_000 * 1.1
        assert share.api_limit_concurrency > share.api_max_streams
        assert share.api_workers == workers


def test_each_worker_gets_its_share_of_the_caps() -> None:
    settings = ApiSettings(
        api_max_streams=1001,
        api_limit_concurrency=1100,
        api_pool_size=7,
        api_history_concurrency=6,
        api_max_streams_per_client=1000,
    )
    share = settings.worker_share(2)
    assert (share.api_max_streams, share.api_limit_concurrency) == (501, 550)
    # compose's pool of 7: the two workers' pools and LISTEN connections hold the 8 connections
    # one process held, so the database login's limit still fits two replicas
    assert share.api_pool_size == 3 and 2 * (share.api_pool_size + 1) <= 7 + 1
    assert share.api_history_concurrency == 2  # one pooled connection left for the rest
    # per-client limits are each worker's, less than its share of the whole
    assert share.api_max_streams_per_client == 500
    assert share.api_pool_size_per_client == 2
    assert share.api_history_concurrency_per_client == 1
    assert settings.worker_share(1).api_max_streams == 1001
    tiny = ApiSettings(api_max_streams=4, api_limit_concurrency=5).worker_share(4)
    assert (tiny.api_max_streams, tiny.api_limit_concurrency, tiny.api_pool_size) == (1, 2, 5)
    assert tiny.api_max_streams_per_client == 1


def test_workers_are_counted_from_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKSTREAMER_API_WORKERS", "0")
    with pytest.raises(ValidationError, match="api_workers"):
        ApiSettings()
    monkeypatch.setenv("STOCKSTREAMER_API_WORKERS", "3")
    assert ApiSettings().worker_count() == 3
