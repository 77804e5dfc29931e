"""The compose services' commands and environment, run natively: the stack comes up and streams."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from services.runner.embedded_db import free_port
from services.runner.processes import ServiceProcess
from tests.deploy.compose import COMPOSE_FILE, ENV_EXAMPLE, dotenv, interpolate_all, load_yaml
from tests.utils.postgres import create_database, drop_database

PORT_SETTINGS = {
    "fetcher": "STOCKSTREAMER_FETCHER_METRICS_PORT",
    "api": "STOCKSTREAMER_API_PORT",
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


def container_env(
    compose: dict[str, Any], service: str, database_url: str, ports: dict[str, int]
) -> dict[str, str]:
    """What the container would see, moved onto loopback: the test server, free ports."""
    env = {**dotenv(ENV_EXAMPLE.read_text()), **compose["services"][service].get("environment", {})}
    env = {k: str(v) for k, v in env.items()}
    if "DATABASE_URL" in env:
        assert urlsplit(env["DATABASE_URL"]).hostname == "postgres"
        env["DATABASE_URL"] = database_url
    for name, value in list(env.items()):
        if name.endswith("_HOST") and value == "0.0.0.0":
            env[name] = "127.0.0.1"
    if service in PORT_SETTINGS:
        env[PORT_SETTINGS[service]] = str(ports[service])
    if "STOCKSTREAMER_API_URL" in env:
        assert env["STOCKSTREAMER_API_URL"] == "http://api:8000"
        env["STOCKSTREAMER_API_URL"] = f"http://127.0.0.1:{ports['api']}"
    return env


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


async def test_compose_services_come_up_on_the_simulated_market(empty_database: str) -> None:
    compose = interpolate_all(load_yaml(COMPOSE_FILE), dotenv(ENV_EXAMPLE.read_text()))
    ports = {name: free_port() for name in PORT_SETTINGS}

    migrate_cmd = compose["services"]["migrate"]["command"]
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, *migrate_cmd[1:]],
        env=container_env(compose, "migrate", empty_database, ports),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    procs = {
        name: ServiceProcess(
            module(compose, name), container_env(compose, name, empty_database, ports), name=name
        )
        for name in ("fetcher", "api", "dashboard")  # compose's start order
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
    finally:
        codes = {name: proc.stop() for name, proc in reversed(procs.items())}
    assert codes == {"dashboard": 0, "api": 0, "fetcher": 0}, {
        n: p.output for n, p in procs.items()
    }

    conn = await asyncpg.connect(empty_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ticks") > 0
    finally:
        await conn.close()
