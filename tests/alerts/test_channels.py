"""The channels file: names and Apprise URLs, and errors that never quote a URL."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from services.alerts.channels import ChannelsError, load_channels

SECRET = "s3cr3t-token"


def test_names_map_to_apprise_urls(tmp_path: Path) -> None:
    path = tmp_path / "channels.yaml"
    path.write_text(
        "# where alerts go\n"
        f"phone: ntfy://ntfy.sh/{SECRET}\n"
        f"ops-room: json://hooks.example.com/{SECRET}\n"
        f"team_chat: 'slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7F'\n"
    )
    assert load_channels(path) == {
        "phone": f"ntfy://ntfy.sh/{SECRET}",
        "ops-room": f"json://hooks.example.com/{SECRET}",
        "team_chat": "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7F",
    }


def test_no_file_an_empty_one_or_a_missing_one_means_only_the_browser(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert load_channels(None) == {}
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert load_channels(empty) == {}
    with caplog.at_level(logging.WARNING):
        assert load_channels(tmp_path / "absent.yaml") == {}
    assert "channels file not found" in caplog.text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"phone: json://x/{SECRET}\n  bad: [\n", "is not valid YAML at line"),
        (f"- json://x/{SECRET}\n", "must be a mapping of channel names to Apprise URLs"),
        (f"Phone: json://x/{SECRET}\n", "channel name 'Phone'"),
        (f"9lives: json://x/{SECRET}\n", "channel name '9lives'"),
        (f"{'a' * 33}: json://x/{SECRET}\n", "at most 32 characters"),
        (f"browser: json://x/{SECRET}\n", "the name is built in"),
        ("phone: 12\n", "its value must be an Apprise URL"),
        ("phone:\n", "its value must be an Apprise URL"),
        (f"phone: [json://x/{SECRET}]\n", "its value must be an Apprise URL"),
        (f"phone: nonsense://{SECRET}@example.com\n", "Apprise does not understand its URL"),
    ],
)
def test_a_bad_file_is_named_with_its_problem_never_its_urls(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "channels.yaml"
    path.write_text(text)
    with pytest.raises(ChannelsError) as raised:
        load_channels(path)
    assert problem in str(raised.value)
    assert SECRET not in str(raised.value)


def test_an_unreadable_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ChannelsError, match="cannot read"):
        load_channels(tmp_path)  # a directory
