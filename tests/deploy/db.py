"""psql against the tests' PostgreSQL: db/users.sql and compose's one-shots run natively."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from services.runner.embedded_db import postgres_bin_dir
from services.secrets import scram_verifier

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


def users_sql(admin_url: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """db/users.sql as the superuser, with psql variables (fetcher_verifier=..., iam=on)."""
    argv = ["psql", "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1"]
    for name, value in variables.items():
        argv += ["-v", f"{name}={value}"]
    path = f"{psql_dir()}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(  # noqa: S603
        [*argv, "-f", str(USERS_SQL)],
        env={**os.environ, **libpq_env(admin_url), "PATH": path},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def apply_users(admin_url: str, **variables: str) -> None:
    """db/users.sql as the superuser; fails with psql's output."""
    result = users_sql(admin_url, **variables)
    assert result.returncode == 0, result.stdout + result.stderr


# The logins' passwords in the tests (the test server trusts loopback: they matter only where a
# test says so).
PASSWORDS = {
    "fetcher": "fetcher-secret",
    "api": "api-secret",
    "alerts": "alerts-secret",
    "monitor": "monitor-secret",
}


def apply_logins(
    admin_url: str, passwords: Mapping[str, str] = PASSWORDS, **variables: str
) -> dict[str, str]:
    """db/users.sql with each login's SCRAM verifier, as compose hands them over; returns them
    (fetcher_verifier=..., as the psql variables are named)."""
    verifiers = {f"{name}_verifier": scram_verifier(pw) for name, pw in passwords.items()}
    apply_users(admin_url, **verifiers, **variables)
    return verifiers


def as_user(url: str, user: str, password: str | None = None) -> str:
    """`url` logging in as `user`."""
    parts = urlsplit(url)
    auth = user if password is None else f"{user}:{password}"
    return urlunsplit(parts._replace(netloc=f"{auth}@{parts.hostname}:{parts.port}"))


# (login user, group role) of each service that connects to the database; db/users.sql makes them.
LOGINS = {
    "fetcher": ("stockstreamer_fetcher", "stockstreamer_writer"),
    "api": ("stockstreamer_api", "stockstreamer_editor"),
    "alerts": ("stockstreamer_alerts", "stockstreamer_alerter"),
}
# Group roles a login holds besides its own (the API's older role, kept while its setting moves).
ALSO_GRANTED = {"stockstreamer_api": {"stockstreamer_reader"}}
