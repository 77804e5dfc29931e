"""Dashboard settings from the environment."""

from __future__ import annotations

from pathlib import Path

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


def test_without_a_token_the_page_cannot_write() -> None:
    assert DashboardSettings().write_token() is None


def test_the_token_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKSTREAMER_DASHBOARD_API_TOKEN", "s3cret-token-for-writes")
    s = DashboardSettings()
    assert s.write_token() == "s3cret-token-for-writes"
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())


def test_the_token_file_is_read_at_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    file = tmp_path / "api-token"
    file.write_text("# made by the runner\n\n  token-from-the-file  \nsecond-token\n")
    monkeypatch.setenv("STOCKSTREAMER_DASHBOARD_API_TOKEN_FILE", str(file))
    s = DashboardSettings()
    file.unlink()  # read once, at start
    assert s.write_token() == "token-from-the-file"
    monkeypatch.setenv("STOCKSTREAMER_DASHBOARD_API_TOKEN", "given-directly-wins")
    assert DashboardSettings().write_token() == "given-directly-wins"  # the file not read


@pytest.mark.parametrize("contents", [None, "", "# only a comment\n"])
def test_an_unusable_token_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, contents: str | None
) -> None:
    file = tmp_path / "api-token"
    if contents is not None:
        file.write_text(contents)
    monkeypatch.setenv("STOCKSTREAMER_DASHBOARD_API_TOKEN_FILE", str(file))
    with pytest.raises(ValidationError, match="dashboard_api_token_file"):
        DashboardSettings()
