"""The alerts service's settings: names and defaults shared with the deployment."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.alerts.config import AlertsSettings
from services.common.config import env_names


def test_defaults() -> None:
    settings = AlertsSettings()
    assert (settings.alerts_host, settings.alerts_port) == ("127.0.0.1", 9102)
    assert settings.alerts_db_role == "stockstreamer_alerter"
    assert settings.alert_rearm_pct == 0.2
    assert settings.alert_channels_file is None


def test_environment_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    names = env_names(AlertsSettings)
    for name in (
        "DATABASE_URL",
        "DATABASE_URL_FILE",
        "STOCKSTREAMER_ALERTS_HOST",
        "STOCKSTREAMER_ALERTS_PORT",
        "STOCKSTREAMER_ALERTS_DB_ROLE",
        "STOCKSTREAMER_ALERT_CHANNELS_FILE",
        "STOCKSTREAMER_ALERT_REARM_PCT",
    ):
        assert name in names
    url_file = tmp_path / "alerts-database-url"
    url_file.write_text("postgresql://stockstreamer_alerts:pw@db/stockstreamer\n")
    monkeypatch.setenv("DATABASE_URL_FILE", str(url_file))
    monkeypatch.setenv("STOCKSTREAMER_ALERTS_DB_ROLE", "none")
    monkeypatch.setenv("STOCKSTREAMER_ALERT_REARM_PCT", "0.5")
    monkeypatch.setenv("STOCKSTREAMER_ALERT_CHANNELS_FILE", "/run/secrets/alert_channels")
    settings = AlertsSettings()
    assert settings.database_url_now() == "postgresql://stockstreamer_alerts:pw@db/stockstreamer"
    assert settings.alerts_db_role is None
    assert settings.alert_rearm_pct == 0.5
    assert settings.alert_channels_file == Path("/run/secrets/alert_channels")


def test_retry_waits_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKSTREAMER_ALERT_RETRY_WAIT_INITIAL", "5")
    monkeypatch.setenv("STOCKSTREAMER_ALERT_RETRY_WAIT_MAX", "1")
    with pytest.raises(ValueError, match="WAIT_MAX must be at least"):
        AlertsSettings()
