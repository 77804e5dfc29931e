"""The settings base every service extends: env, `.env`, and secrets from files."""

from __future__ import annotations

import os
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AliasChoices, BeforeValidator, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _no_role(value: object) -> object:
    # `none` (or an explicit empty value) means "stay the login user"; empty env values are
    # otherwise ignored, which would silently restore the default role.
    if isinstance(value, str) and value.strip().lower() in ("", "none"):
        return None
    return value


DbRole = Annotated[str | None, BeforeValidator(_no_role)]
"""A database role a service switches to on connect; None (`none`) keeps the login user."""


def _split_commas(value: object) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError("expected a comma-separated list")
    return [str(item).strip() for item in items if str(item).strip()]


CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]
"""A list setting written as `a,b,c` in the environment (not as JSON)."""

_SHORT_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _short_duration(value: object) -> object:
    # 7d, 12h, 30m, 90s, 2w or plain seconds; anything else goes on to pydantic (ISO 8601: P7D)
    if isinstance(value, str) and (match := _SHORT_DURATION.match(value)):
        return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2].lower() or "s"])
    return value


Duration = Annotated[timedelta, BeforeValidator(_short_duration)]
"""A duration setting: seconds, 7d/12h/30m (s, m, h, d, w), or ISO 8601 (P7D, PT36H)."""

S = TypeVar("S", bound=BaseSettings)


def trusted_proxies_field() -> Any:
    """`STOCKSTREAMER_TRUSTED_PROXIES`, one meaning for every service that reads it."""
    return Field(
        default_factory=list,
        description="Comma-separated addresses, networks (CIDR) or host names of proxies whose "
        "X-Forwarded-For names the client (e.g. proxy,dashboard); empty: trust none, every "
        "client is its peer address.",
    )


def describe_errors(exc: ValidationError) -> str:
    """One line per bad setting: its name and what is wrong, never the value given.

    pydantic's own message repeats each input, which may be a password or a vendor key.
    """
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        lines.append(f"  {name}: {error['msg']}")
    return "\n".join(lines)


def load_settings(settings_cls: type[S], service: str) -> S:
    """A service's settings, or exit 2 with a message naming each bad setting (no traceback)."""
    try:
        return settings_cls()
    except ValidationError as exc:
        print(
            f"stockstreamer {service}: invalid settings:\n{describe_errors(exc)}", file=sys.stderr
        )
        raise SystemExit(2) from None


DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:54329/stockstreamer?sslmode=disable"


class CommonSettings(BaseSettings):
    """Settings shared by all services; names are `STOCKSTREAMER_*` except `DATABASE_URL`."""

    model_config = SettingsConfigDict(
        env_prefix="STOCKSTREAMER_",
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
    )

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
        repr=False,  # may carry a password
        description="PostgreSQL URL; DATABASE_URL_FILE names a file holding it instead.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Least severe log level written."
    )
    database_url_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL_FILE", "database_url_file"),
        description="A file holding the PostgreSQL URL (used when DATABASE_URL is not set); "
        "read again for every new connection, so rotated credentials need no restart.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="`text` for people, `json` for one JSON object per line."
    )

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        """Take DATABASE_URL from DATABASE_URL_FILE (Docker secrets) when only the file is given."""
        if not isinstance(data, dict):
            return data
        if data.get("DATABASE_URL") or data.get("database_url"):
            # a URL given directly wins, and then it is the one connections use
            file_keys = ("DATABASE_URL_FILE", "database_url_file")
            return {k: v for k, v in data.items() if k not in file_keys}
        path = data.get("DATABASE_URL_FILE") or data.get("database_url_file")
        path = path or os.environ.get("DATABASE_URL_FILE")
        if path:
            data = {**data, "database_url": _read_url(Path(path)), "database_url_file": path}
        return data

    def database_url_now(self) -> str:
        """The URL to connect with now: the file's current contents when it is the source."""
        if self.database_url_file is None:
            return self.database_url
        try:
            return _read_url(self.database_url_file)
        except ValueError:
            return self.database_url  # mid-rotation or gone: the last URL that was read


def _read_url(path: Path) -> str:
    try:
        url = path.read_text().strip()
    except OSError as exc:  # a clear settings error, not a traceback
        raise ValueError(f"DATABASE_URL_FILE: cannot read {path}: {exc.strerror}") from None
    if not url:
        raise ValueError(f"DATABASE_URL_FILE: {path} is empty")
    return url


def read_secret(value: str | None, file: str | None) -> str | None:
    """A secret given directly or through a file name (for Docker/Kubernetes secrets)."""
    if value:
        return value
    if file:
        return Path(file).read_text().strip() or None
    return None


def env_names(settings_cls: type[BaseSettings]) -> dict[str, str]:
    """Environment variable name → field name, for every field of a settings class."""
    prefix = settings_cls.model_config.get("env_prefix", "")
    names: dict[str, str] = {}
    for field_name, info in settings_cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            env = next(c for c in alias.choices if isinstance(c, str) and c.isupper())
        elif isinstance(alias, str):
            env = alias
        else:
            env = f"{prefix}{field_name}".upper()
        names[env] = field_name
    return names
