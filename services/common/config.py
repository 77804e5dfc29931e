"""The settings base every service extends: env, `.env`, and secrets from files."""

from __future__ import annotations

import os
import sys
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

S = TypeVar("S", bound=BaseSettings)


def load_settings(settings_cls: type[S], service: str) -> S:
    """A service's settings, or exit 2 with a message naming each bad setting (no traceback)."""
    try:
        return settings_cls()
    except ValidationError as exc:
        print(f"stockstreamer {service}: invalid settings:\n{exc}", file=sys.stderr)
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
    log_format: Literal["text", "json"] = Field(
        "text", description="`text` for people, `json` for one JSON object per line."
    )

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        """Take DATABASE_URL from DATABASE_URL_FILE (Docker secrets) when only the file is given."""
        if isinstance(data, dict) and not data.get("DATABASE_URL") and not data.get("database_url"):
            path = os.environ.get("DATABASE_URL_FILE")
            if path:
                data = {**data, "database_url": Path(path).read_text().strip()}
        return data


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
