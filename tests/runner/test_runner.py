"""`make run`'s runner: embedded PostgreSQL, migrations, every service, and a clean Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.common.cpus import available_cpus
from services.common.migrations import migrate
from services.runner.__main__ import Ports, Token, banner
from services.runner.embedded_db import EmbeddedPostgres, free_port
from services.runner.processes import ROOT, ServiceProcess
from services.runner.token import ensure_api_token
from tests.utils.waiting import eventually

SECRET_FILES = ("postgres-password", "fetcher-db-password", "api-db-password", "alerts-db-password")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _runner_env(data_dir: Path, pg_port: int) -> dict[str, str]:
    return {"STOCKSTREAMER_DATA_DIR": str(data_dir), "STOCKSTREAMER_EMBEDDED_PG_PORT": str(pg_port)}


def _passwords(data_dir: Path) -> dict[str, str]:
    return {name: (data_dir / "secrets" / name).read_text().strip() for name in SECRET_FILES}


def _command_lines() -> list[str]:
    """Every process's command line on this machine."""
    lines = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, UnicodeDecodeError):
            continue
    return lines


async def _sessions(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT usename FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return {r["usename"] for r in rows}


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A `.data` of the test's own, removed afterwards (its server stopped, should one be left)."""
    path = Path(tempfile.mkdtemp(prefix="stockstreamer-run-"))
    try:
        yield path
    finally:
        EmbeddedPostgres(path / "postgres").stop("immediate")
        shutil.rmtree(path, ignore_errors=True)


async def test_run_starts_everything_and_ctrl_c_stops_everything(data_dir: Path) -> None:
    ports = {name: free_port() for name in ("pg", "api", "dashboard", "metrics", "alerts")}
    env = {
        **_runner_env(data_dir, ports["pg"]),
        "STOCKSTREAMER_API_PORT": str(ports["api"]),
        "STOCKSTREAMER_DASHBOARD_PORT": str(ports["dashboard"]),
        "STOCKSTREAMER_FETCHER_METRICS_PORT": str(ports["metrics"]),
        "STOCKSTREAMER_ALERTS_PORT": str(ports["alerts"]),
    }
    runner = ServiceProcess("services.runner", env, name="runner").start()
    try:
        api = f"http://127.0.0.1:{ports['api']}"
        runner.wait_http(f"{api}/healthz", timeout=60)

        async def every_stock_has_a_price() -> bool:
            stocks = httpx.get(f"{api}/api/v1/stocks", timeout=5).json()
            return len(stocks) == 6 and all(s["last_price"] for s in stocks)

        await eventually(every_stock_has_a_price, timeout=15)
        # Every login needs its password; each service is logged in as its own login user.
        server = f"127.0.0.1:{ports['pg']}/stockstreamer?sslmode=disable"
        users = ("stockstreamer_fetcher", "stockstreamer_api", "stockstreamer_alerts")
        for user in ("postgres", *users):
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(f"postgresql://{user}@{server}")
        passwords = _passwords(data_dir)
        owner = f"postgresql://postgres:{passwords['postgres-password']}@{server}"

        async def every_service_is_connected() -> bool:
            return await _sessions(owner) == set(users)

        await eventually(every_service_is_connected, timeout=15)
        # and no password is on any command line, or in what the runner printed
        commands = _command_lines()
        for password in passwords.values():
            assert not any(password in line for line in commands)
            assert password not in runner.output
        # The API's write token: made on this first start, yours alone, printed in the banner
        # that once and on no command line; writes need it.
        token_file = data_dir / "secrets" / "api-token"
        token = token_file.read_text().strip()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert runner.output.count(token) == 1, runner.output
        assert f"api token  {token}  (new: shown this once; kept in {token_file})" in runner.output
        assert not any(token in line for line in commands)
        add = {"symbol": "AMD"}
        assert httpx.post(f"{api}/api/v1/stocks", json=add, timeout=10).status_code == 401
        headers = {"Authorization": f"Bearer {token}"}
        written = httpx.post(f"{api}/api/v1/stocks", json=add, headers=headers, timeout=10)
        assert written.status_code == 202, written.text

        # The dashboard asks on its viewers' behalf from loopback, naming each: the API counts
        # the viewers against its per-client limits, not the dashboard as one client.
        async with httpx.AsyncClient(base_url=api, timeout=10) as client:
            answers = await asyncio.gather(
                *(
                    client.get(
                        "/api/v1/prices",
                        params={"symbols": "AAPL", "max_points": 10},
                        headers={"X-Forwarded-For": f"198.51.100.{i}"},
                    )
                    for i in range(60)
                )
            )
        assert not [a.status_code for a in answers if a.status_code == 429]

        runner.wait_http(f"http://127.0.0.1:{ports['dashboard']}/", timeout=30)
        runner.wait_http(f"http://127.0.0.1:{ports['metrics']}/metrics")
        runner.wait_http(f"http://127.0.0.1:{ports['alerts']}/healthz")
        # where each service listens is printed for the person who ran it, and the API's workers
        for port in (ports["api"], ports["dashboard"], ports["metrics"], ports["alerts"]):
            assert f"localhost:{port}" in runner.output
        cpus = available_cpus()
        workers = "1 process" if cpus == 1 else f"{cpus} worker processes"
        assert f"localhost:{ports['api']}/docs  ({workers})" in runner.output

        runner.signal(signal.SIGINT)
        assert runner.wait(30) == 0
    finally:
        runner.stop()
    assert not any(_listening(p) for p in ports.values()), runner.output
    assert not EmbeddedPostgres(data_dir / "postgres").is_running()


async def test_a_cluster_from_before_passwords_is_upgraded_in_place(data_dir: Path) -> None:
    """`.data` as older versions left it (trust authentication, the services as the superuser):
    the next start gives the superuser a password and asks every login for one, data kept."""
    port = free_port()
    old = EmbeddedPostgres(data_dir / "postgres", port=port)
    old.start()
    try:
        await old.create_database()
        await asyncio.to_thread(migrate, old.url)
        conn = await asyncpg.connect(old.url)
        await conn.execute("INSERT INTO stocks (symbol, name) VALUES ('KEPT', 'stored before')")
        await conn.close()
    finally:
        old.stop()

    result = await asyncio.to_thread(_runner, "migrate", _runner_env(data_dir, port))
    assert result.returncode == 0, result.stdout + result.stderr

    password = _passwords(data_dir)["postgres-password"]
    assert password not in result.stdout + result.stderr
    upgraded = EmbeddedPostgres(data_dir / "postgres", port=port, password=password)
    assert not upgraded.needs_passwords()
    upgraded.start()
    try:
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(old.url)
        conn = await asyncpg.connect(upgraded.url)
        try:
            assert await conn.fetchval("SELECT name FROM stocks WHERE symbol = 'KEPT'") == (
                "stored before"
            )
            logins = await conn.fetch(
                "SELECT rolname FROM pg_authid WHERE rolname LIKE 'stockstreamer\\_%'"
                " AND rolcanlogin AND rolpassword LIKE 'SCRAM-SHA-256$%'"
            )
            assert {r["rolname"] for r in logins} >= {"stockstreamer_fetcher", "stockstreamer_api"}
        finally:
            await conn.close()
    finally:
        upgraded.stop()


def _runner(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m services.runner <command>`, as `make <command>` runs it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSTREAMER_")}
    clean.pop("DATABASE_URL", None)
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "services.runner", command],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_a_server_of_your_own_is_used_as_it_is(database_url: str, data_dir: Path) -> None:
    """With DATABASE_URL nothing is started and no login made: the runner migrates and applies
    the retention as that URL's user (the owner), and the services would use the URL itself."""
    env = {
        "DATABASE_URL": database_url,
        "STOCKSTREAMER_DATA_DIR": str(data_dir),
        "STOCKSTREAMER_RETENTION": "7d",
        "STOCKSTREAMER_RETENTION_MINUTE": "P90D",
    }
    result = await asyncio.to_thread(_runner, "migrate", env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "retention applied" in result.stdout
    assert not any(data_dir.iterdir()), "no embedded server, no secrets"
    conn = await asyncpg.connect(database_url)
    try:
        keeps = await conn.fetch("SELECT DISTINCT keep::text AS k FROM partition_policy ORDER BY 1")
    finally:
        await conn.close()
    assert [r["k"] for r in keeps] == ["7 days", "90 days"]


def test_the_token_is_made_once_and_shown_only_by_the_start_that_made_it(tmp_path: Path) -> None:
    """The first start makes the token (0600) and its banner shows it; later starts show where
    it is only; tokens you chose there (one a line) are kept as they are."""
    ports = Ports(api=8000, dashboard=5006, fetcher_metrics=9101, alerts=9102)
    url = "postgresql://postgres:owner-secret@127.0.0.1:54329/stockstreamer"
    file, new = ensure_api_token(tmp_path / "secrets")
    assert new is not None and file.read_text() == new and len(new) == 43
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE(file.parent.stat().st_mode) == 0o700
    first = banner(ports, url, token=Token(file, new))
    assert first.count(new) == 1 and "owner-secret" not in first
    assert "alerts     http://localhost:9102/metrics" in first
    again, shown = ensure_api_token(tmp_path / "secrets")
    assert (again, shown) == (file, None) and file.read_text() == new
    later = banner(ports, url, token=Token(file))
    assert new not in later and f"api token  in {file}" in later
    file.write_text("# rotating\nold-token-0123456789\nnew-token-9876543210\n")
    file.chmod(0o644)
    assert ensure_api_token(tmp_path / "secrets") == (file, None)
    assert "old-token-0123456789" in file.read_text()
    assert stat.S_IMODE(file.stat().st_mode) == 0o600, "yours alone again"
