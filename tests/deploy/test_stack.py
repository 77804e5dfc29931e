"""The compose services' commands and environment, run natively: the stack comes up and streams."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from services.runner.embedded_db import free_port
from services.runner.processes import ServiceProcess
from tests.deploy.compose import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    ROOT,
    dotenv,
    interpolate_all,
    load_yaml,
    make_secrets,
    secret_paths,
)
from tests.deploy.db import as_user, run_native
from tests.utils.postgres import create_database, drop_database

PORT_SETTINGS = {
    "fetcher": "STOCKSTREAMER_FETCHER_METRICS_PORT",
    "api": "STOCKSTREAMER_API_PORT",
    "alerts": "STOCKSTREAMER_ALERTS_PORT",
    "dashboard": "STOCKSTREAMER_DASHBOARD_PORT",
}


@pytest.fixture
def empty_database(pg_admin_url: str) -> Iterator[str]:
    """A database no migration has touched, as the postgres container starts."""
    url = asyncio.run(create_database(pg_admin_url))
    try:
        yield url
    finally:
        asyncio.run(drop_database(url))


def native(value: str, files: dict[str, str]) -> str:
    """A container path (`/run/secrets/...`, `/db/...`) as the file beside this test."""
    for container_path, host_path in files.items():
        value = value.replace(container_path, host_path)
    return value


def native_files(compose: dict[str, Any], database_url: str, tmp_path: Path) -> dict[str, str]:
    """The secret files with URLs of the test server, and db/ where compose mounts it: each
    container's /run/secrets/<file> as the secrets layout hands it out (db-users: the logins'
    SCRAM verifiers), and whatever else compose names."""
    secrets_dir = make_secrets(tmp_path / "secrets")
    for path in secrets_dir.glob("*-database-url"):
        user = urlsplit(path.read_text()).username
        assert user is not None
        path.chmod(0o600)
        # migrate keeps the test server's superuser; the services log in as their own users.
        path.write_text(database_url if user == "stockstreamer" else as_user(database_url, user))
    files = secret_paths(secrets_dir)
    files["/db/users.sql"] = str(ROOT / "db" / "users.sql")
    return files


def container_env(
    compose: dict[str, Any], service: str, files: dict[str, str], ports: dict[str, int]
) -> dict[str, str]:
    """What the container would see, moved onto loopback: the test server, free ports."""
    env = {**dotenv(ENV_EXAMPLE.read_text()), **compose["services"][service].get("environment", {})}
    env = {k: native(str(v), files) for k, v in env.items()}
    for name, value in list(env.items()):
        if name.endswith("_HOST") and value == "0.0.0.0":
            env[name] = "127.0.0.1"
    if service in PORT_SETTINGS:
        env[PORT_SETTINGS[service]] = str(ports[service])
    if "STOCKSTREAMER_API_URL" in env:
        assert env["STOCKSTREAMER_API_URL"] == "http://api:8000"
        env["STOCKSTREAMER_API_URL"] = f"http://127.0.0.1:{ports['api']}"
    return env


def one_shot(compose: dict[str, Any], service: str, files: dict[str, str], url: str) -> None:
    """A compose one-shot's entrypoint and command, run here; libpq pointed at the test server."""
    spec = compose["services"][service]
    argv = [native(a, files) for a in [*spec.get("entrypoint", []), *spec["command"]]]
    env = container_env(compose, service, files, {})
    env = {k: v for k, v in env.items() if not k.startswith("PG")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    run_native(argv, url, env)


def module(compose: dict[str, Any], service: str) -> str:
    command = compose["services"][service]["command"]
    assert command[:2] == ["python", "-m"], command
    return str(command[2])


def healthcheck(compose: dict[str, Any], service: str, port: int, timeout: float = 30) -> None:
    """The compose healthcheck itself, pointed at the service's port, until it passes."""
    test = compose["services"][service]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    fixed = compose["services"][service]["environment"][PORT_SETTINGS[service]]
    argv = [sys.executable, *(a.replace(f":{fixed}/", f":{port}/") for a in test[2:])]
    deadline = time.monotonic() + timeout
    while subprocess.run(argv, capture_output=True, check=False).returncode != 0:  # noqa: S603
        assert time.monotonic() < deadline, f"{service} never became healthy"
        time.sleep(0.2)


async def test_compose_services_come_up_on_the_simulated_market(
    empty_database: str, tmp_path: Path
) -> None:
    """Migrations, login users, then each service as its own login user, with its secret files."""
    compose = interpolate_all(load_yaml(COMPOSE_FILE), dotenv(ENV_EXAMPLE.read_text()))
    ports = {name: free_port() for name in PORT_SETTINGS}

    files = native_files(compose, empty_database, tmp_path)
    for service in ("migrate", "db-users"):  # compose's order
        await asyncio.to_thread(one_shot, compose, service, files, empty_database)

    procs = {
        name: ServiceProcess(
            module(compose, name), container_env(compose, name, files, ports), name=name
        )
        for name in ("fetcher", "api", "alerts", "dashboard")  # compose's start order
    }
    try:
        for name, proc in procs.items():
            proc.start()
            await asyncio.to_thread(healthcheck, compose, name, ports[name])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['api']}") as client:
            latest: list[Any] = []
            for _ in range(100):
                latest = (
                    await client.get("/api/v1/prices/latest", params={"symbols": "AAPL,NVDA"})
                ).json()
                if latest:
                    break
                await asyncio.sleep(0.1)
        assert {row["symbol"] for row in latest} >= {"AAPL", "NVDA"}
        page = httpx.get(f"http://127.0.0.1:{ports['dashboard']}/", timeout=10)
        assert page.status_code == 200
        # Each service is connected as its own login user, never the superuser.
        conn = await asyncpg.connect(empty_database)
        try:
            sessions = await conn.fetch(
                "SELECT DISTINCT usename FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                # a connection still authenticating has no user yet
                " AND usename IS NOT NULL"
            )
        finally:
            await conn.close()
        assert {s["usename"] for s in sessions} == {
            "stockstreamer_fetcher",
            "stockstreamer_api",
            "stockstreamer_alerts",
        }
    finally:
        codes = {name: proc.stop() for name, proc in reversed(procs.items())}
    assert codes == {"dashboard": 0, "alerts": 0, "api": 0, "fetcher": 0}, {
        n: p.output for n, p in procs.items()
    }

    conn = await asyncpg.connect(empty_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ticks") > 0
    finally:
        await conn.close()
