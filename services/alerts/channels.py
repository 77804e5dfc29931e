"""The delivery channels: STOCKSTREAMER_ALERT_CHANNELS_FILE (YAML, name → Apprise URL).

The URLs carry credentials (webhook tokens, passwords): no message here ever quotes one, nor
the YAML around it; errors name the channel and the problem.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

BROWSER = "browser"  # built in: delivered by the `alert` notification the API streams
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MAX_CHANNELS = 100


class ChannelsError(ValueError):
    """The channels file cannot be used; the message names the problem, never a URL."""


def apprise_module() -> Any:
    """Apprise, its plugins loaded once."""
    # Apprise's e-mail plugin imports the standard library's `imghdr`, deprecated since Python
    # 3.11 (gone in 3.13, where Apprise brings its own): a warning about Apprise, not about us.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="'imghdr' is deprecated", category=DeprecationWarning
        )
        import apprise

        apprise.Apprise.instantiate("json://localhost")  # loads every plugin now
    # Apprise logs the URLs it handles (with their secrets, at some levels): not in our logs.
    logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)
    return apprise


def load_channels(path: Path | None) -> dict[str, str]:
    """name → Apprise URL from the file (none without one, or when it is empty or missing)."""
    if path is None:
        return {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        log.warning(
            "channels file not found; only the browser channel is available",
            extra={"path": str(path)},
        )
        return {}
    except OSError as exc:
        raise ChannelsError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        # its message quotes the offending line, which may hold a URL: only say where it is
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ChannelsError(f"{path} is not valid YAML{where}") from None
    except yaml.YAMLError:
        raise ChannelsError(f"{path} is not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ChannelsError(f"{path} must be a mapping of channel names to Apprise URLs")
    if len(data) > MAX_CHANNELS:
        raise ChannelsError(f"{path} names {len(data)} channels; at most {MAX_CHANNELS}")
    apprise = apprise_module()
    channels: dict[str, str] = {}
    for name, url in data.items():
        if not isinstance(name, str) or not NAME.match(name):
            shown = name if isinstance(name, str | int | float | bool) else type(name).__name__
            raise ChannelsError(
                f"channel name {str(shown)[:40]!r} in {path}: use lowercase letters, digits, "
                "_ and -, starting with a letter, at most 32 characters"
            )
        if name == BROWSER:
            raise ChannelsError(f"channel {name!r} in {path}: the name is built in (needs no URL)")
        if not isinstance(url, str) or not url.strip():
            raise ChannelsError(f"channel {name!r} in {path}: its value must be an Apprise URL")
        if apprise.Apprise.instantiate(url.strip()) is None:
            raise ChannelsError(
                f"channel {name!r} in {path}: Apprise does not understand its URL "
                "(see https://github.com/caronc/apprise/wiki for the URL of each service)"
            )
        channels[name] = url.strip()
    return channels
