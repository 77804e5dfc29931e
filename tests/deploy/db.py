"""psql against the tests' PostgreSQL: db/users.sql and compose's one-shots run natively."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from services.runner.embedded_db import postgres_bin_dir

ROOT = Path(__file__).resolve().parents[2]
USERS_SQL = ROOT / "db" / "users.sql"


def psql_dir() -> Path:
    """Where psql is: the embedded server's, else the one on PATH (with DATABASE_URL)."""
    try:
        return postgres_bin_dir()
    except RuntimeError:
        found = shutil.which("psql")
        assert found, "psql is needed: install the dev extras or PostgreSQL's client"
        return Path(found).parent


def libpq_env(url: str) -> dict[str, str]:
    """PG* variables that point libpq (psql) at `url`."""
    parts = urlsplit(url)
    env = {
        "PGHOST": parts.hostname or "127.0.0.1",
        "PGPORT": str(parts.port or 5432),
        "PGUSER": parts.username or "postgres",
        "PGDATABASE": parts.path.lstrip("/"),
    }
    if parts.password:
        env["PGPASSWORD"] = parts.password
    return env


def run_native(
    argv: Sequence[str], url: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A psql-using command with libpq pointed at `url` and psql on PATH; fails with its output."""
    path = f"{psql_dir()}{os.pathsep}{os.environ.get('PATH', '')}"
    full = {**os.environ, **libpq_env(url), "PATH": path, **(env or {})}
    result = subprocess.run(  # noqa: S603
        list(argv), env=full, cwd=ROOT, capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def apply_users(admin_url: str, **variables: str) -> None:
    """db/users.sql as the superuser, with psql variables (fetcher_password=..., iam=on)."""
    args = [f"{name}={value}" for name, value in variables.items()]
    argv = ["psql", "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1"]
    for arg in args:
        argv += ["-v", arg]
    run_native([*argv, "-f", str(USERS_SQL)], admin_url)


def as_user(url: str, user: str, password: str | None = None) -> str:
    """`url` logging in as `user`."""
    parts = urlsplit(url)
    auth = user if password is None else f"{user}:{password}"
    return urlunsplit(parts._replace(netloc=f"{auth}@{parts.hostname}:{parts.port}"))


# (login user, group role) of each service that connects to the database; db/users.sql makes them.
LOGINS = {
    "fetcher": ("stockstreamer_fetcher", "stockstreamer_writer"),
    "api": ("stockstreamer_api", "stockstreamer_reader"),
}
