"""API settings: defaults, environment names, CORS list parsing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.api.config import ApiSettings


def test_defaults() -> None:
    settings = ApiSettings()
    assert (settings.api_host, settings.api_port) == ("127.0.0.1", 8000)
    assert settings.api_db_role == "stockstreamer_reader"
    assert settings.cors_origins == []
    assert settings.api_stream_heartbeat == 15


def test_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKSTREAMER_API_PORT", "8100")
    monkeypatch.setenv("STOCKSTREAMER_CORS_ORIGINS", "http://localhost:5006/, https://a.example")
    monkeypatch.setenv("STOCKSTREAMER_API_STREAM_QUEUE_SIZE", "8")
    monkeypatch.setenv("STOCKSTREAMER_API_DB_ROLE", "none")
    settings = ApiSettings()
    assert settings.api_port == 8100 and settings.api_stream_queue_size == 8
    assert settings.cors_origins == ["http://localhost:5006", "https://a.example"]
    assert settings.api_db_role is None  # `none`: stay the login user


@pytest.mark.parametrize(
    ("name", "value"),
    [("STOCKSTREAMER_API_PORT", "70000"), ("STOCKSTREAMER_API_STREAM_HEARTBEAT", "0")],
)
def test_rejects_bad_values(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        ApiSettings()
