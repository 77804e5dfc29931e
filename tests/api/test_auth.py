"""Write tokens: where they come from, how they are checked, and the limit on guessing."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.api.auth import Failures, Tokens
from services.api.config import ApiSettings

URL = "postgresql://u@localhost/db"


def test_tokens_come_from_the_setting_and_the_file(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text("# rotated 2026-12\nfile-token-aaaaaaaaaaaa\n\n  file-token-bbbbbbbbbbbb  \n")
    settings = ApiSettings(
        database_url=URL, api_token="env-token-cccccccccccc", api_tokens_file=file
    )
    assert settings.write_tokens() == [
        "env-token-cccccccccccc",
        "file-token-aaaaaaaaaaaa",
        "file-token-bbbbbbbbbbbb",
    ]
    assert "env-token-cccccccccccc" not in repr(settings)  # a secret, never printed
    tokens = Tokens(settings.write_tokens())
    assert tokens.configured
    assert tokens.accepts("file-token-bbbbbbbbbbbb")
    assert not tokens.accepts("file-token-bbbbbbbbbbbc")
    assert not tokens.accepts("")
    assert not Tokens([]).configured


def test_short_tokens_and_unreadable_files_are_settings_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="at least 16 characters"):
        ApiSettings(database_url=URL, api_token="short")
    with pytest.raises(ValidationError, match="api_tokens_file: cannot read it"):
        ApiSettings(database_url=URL, api_tokens_file=tmp_path / "missing")


def test_a_client_that_keeps_failing_is_held_back_alone() -> None:
    failures = Failures(limit=3)
    for _ in range(3):
        assert failures.blocked_for("10.0.0.1") == 0
        failures.add("10.0.0.1")
    assert 59 < failures.blocked_for("10.0.0.1") <= 60
    assert failures.blocked_for("10.0.0.2") == 0
