"""The database `make run` uses, and what its owner does there after migrating.

The embedded server is the compose stack in small: its superuser migrates and runs db/users.sql
(the logins, the retention), and each service logs in as its own login user with a password, from
a URL file in `.data/secrets` made by the same code as compose's secrets.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from services.common.retention import RetentionSettings, interval_input, set_retention
from services.runner.embedded_db import EmbeddedPostgres, postgres_bin_dir
from services.secrets.layout import SECRETS
from services.secrets.store import Store, resolve

ROOT = Path(__file__).resolve().parents[2]
USERS_SQL = ROOT / "db" / "users.sql"
# Procfile service → the secret file holding its database URL (its own login user).
LOGIN_URLS = {
    "fetcher": "fetcher-database-url",
    "api": "api-database-url",
    "alerts": "alerts-database-url",
}
# db/users.sql's psql variable → the secret file holding its value.
VERIFIERS = {
    "fetcher_verifier": "fetcher-db-verifier",
    "api_verifier": "api-db-verifier",
    "alerts_verifier": "alerts-db-verifier",
}
# What the embedded server needs; the API's token is made by `run` alone (services/runner/token.py),
# whichever the database.
DATABASE_SECRETS = tuple(secret for secret in SECRETS if secret.kind != "token")


@dataclass(frozen=True)
class Database:
    """The owner's URL, and for the embedded server the server and the logins' secret files."""

    url: str
    server: EmbeddedPostgres | None = None
    secrets: Path | None = None
    login_urls: dict[str, Path] = field(default_factory=dict)  # Procfile service → URL file


def embedded(data_dir: Path, port: int) -> Database:
    """The embedded server in `data_dir`, with the secrets beside its data (made once, kept)."""
    secrets_dir = data_dir / "secrets"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    secrets_dir.chmod(0o700)
    # Yours alone (0600), whoever runs it: these services run as you, not as containers' users.
    values = resolve(Store(secrets_dir), None, "127.0.0.1", port, DATABASE_SECRETS)
    password = values["postgres-password"]
    server = EmbeddedPostgres(data_dir / "postgres", port=port, password=password)
    logins = {name: secrets_dir / file for name, file in LOGIN_URLS.items()}
    return Database(server.url, server, secrets_dir, logins)


def without_password(url: str) -> tuple[str, dict[str, str]]:
    """`url` without its password, and libpq's environment that carries it instead."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, {}
    netloc = parts.netloc.rsplit("@", 1)[1]
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc)), {"PGPASSWORD": unquote(parts.password)}


def psql(url: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """psql's command line and environment for `url`: the password only in the environment."""
    bare, env = without_password(url)
    return [str(postgres_bin_dir() / "psql"), *args, bare], {**os.environ, **env}


def users_sql(url: str, variables: Mapping[str, str]) -> None:
    """db/users.sql as `url`'s user (the owner); each psql variable comes through the
    environment (`\\getenv`), so no value is on a command line."""
    options, values = [], {}
    for name, value in variables.items():
        values[f"DB_USERS_{name.upper()}"] = value
        options += ["-c", f"\\getenv {name} DB_USERS_{name.upper()}"]
    argv, env = psql(url, "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1", *options)
    argv[-1:-1] = ["-f", str(USERS_SQL)]  # after the variables, before the URL
    result = subprocess.run(  # noqa: S603 - our own psql, an argument list
        argv, env={**env, **values}, capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0:
        # psql reports names, never the values (db/users.sql repeats none)
        raise RuntimeError(f"db/users.sql failed: {result.stderr.strip()}")


def apply_owner_settings(database: Database, settings: RetentionSettings) -> str:
    """After the migrations: the logins and the retention (embedded), or the retention alone (a
    server of your own, whose users are yours to manage)."""
    retention = {
        "retention": interval_input(settings.retention),
        "retention_minute": interval_input(settings.retention_minute),
    }
    if database.secrets is not None:
        verifiers = {
            name: (database.secrets / file).read_text().strip() for name, file in VERIFIERS.items()
        }
        users_sql(database.url, {**verifiers, **retention})
        return "login users and retention applied (db/users.sql)\n"
    asyncio.run(_set_retention(database.url, settings))
    return "retention applied\n"


async def _set_retention(url: str, settings: RetentionSettings) -> None:
    conn = await asyncpg.connect(url)
    try:
        await set_retention(conn, settings.retention, settings.retention_minute)
    finally:
        await conn.close()
