"""Dashboard settings from the environment."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.dashboard.config import DashboardSettings


def test_defaults_allow_only_this_dashboard_as_origin() -> None:
    s = DashboardSettings()
    assert (s.dashboard_host, s.dashboard_port, s.api_url) == (
        "127.0.0.1",
        5006,
        "http://127.0.0.1:8000",
    )
    assert s.allowed_origins == ["localhost:5006", "127.0.0.1:5006"]
    assert s.dashboard_window == "1h"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKSTREAMER_DASHBOARD_PORT", "7000")
    monkeypatch.setenv("STOCKSTREAMER_API_URL", "https://api.example.org/")
    monkeypatch.setenv("STOCKSTREAMER_ALLOWED_ORIGINS", "stocks.example.org, localhost:7000")
    monkeypatch.setenv("STOCKSTREAMER_DASHBOARD_WINDOW", "1w")
    s = DashboardSettings()
    assert s.allowed_origins == ["stocks.example.org", "localhost:7000"]
    assert s.api_url == "https://api.example.org"
    assert s.dashboard_window == "1w"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STOCKSTREAMER_API_URL", "ftp://x"),
        ("STOCKSTREAMER_DASHBOARD_WINDOW", "2h"),
        ("STOCKSTREAMER_DASHBOARD_MAX_POINTS", "1"),
        ("STOCKSTREAMER_DASHBOARD_PORT", "70000"),
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("STOCKSTREAMER_").lower()):
        DashboardSettings()
