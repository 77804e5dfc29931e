"""The observability profile on a real Docker engine: every target up, the alert rules loaded."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.runner.embedded_db import free_port
from tests.deploy.compose import COMPOSE_FILE, ROOT, load_yaml
from tests.deploy.observability import alert_rules

JOBS = {"fetcher", "api", "dashboard", "postgres", "prometheus"}
APP_SERVICES = ["postgres", "migrate", "fetcher", "api", "dashboard"]


def require_engine() -> str:
    """The docker CLI, talking to an engine with Compose v2; CI fails without one."""
    docker = shutil.which("docker")
    ok = docker is not None and all(
        subprocess.run([docker, *args], capture_output=True, check=False).returncode == 0  # noqa: S603
        for args in (["info"], ["compose", "version"])
    )
    if not ok:
        message = "no Docker engine with Compose v2 reachable"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    assert docker is not None
    return docker


class Project:
    """One compose project of this checkout under a name and host ports of its own."""

    def __init__(self, docker: str, tmp: Path, **env: str) -> None:
        self.docker = docker
        self.name = f"obs{secrets.token_hex(4)}"
        password = tmp / "grafana-admin-password"
        password.write_text(secrets.token_urlsafe(18))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("STOCKSTREAMER_")},
            "DOCKER_BUILDKIT": "0",  # the classic builder asks no registry for frontends
            "COMPOSE_PROFILES": "observability",
            "POSTGRES_PASSWORD": secrets.token_hex(12),
            "GRAFANA_ADMIN_PASSWORD_FILE": str(password),
            **env,
        }

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603
            [self.docker, "compose", "-p", self.name, "-f", str(COMPOSE_FILE), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "10")


@pytest.fixture(scope="module")
def engine() -> str:
    return require_engine()


@pytest.fixture(scope="module")
def stack(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, str]]:
    """The default stack plus Prometheus and postgres_exporter; Grafana is checked as files."""
    ports = {
        "STOCKSTREAMER_API_PORT": free_port(),
        "STOCKSTREAMER_DASHBOARD_PORT": free_port(),
        "STOCKSTREAMER_PROMETHEUS_PORT": free_port(),
    }
    project = Project(
        engine, tmp_path_factory.mktemp("obs"), **{k: str(v) for k, v in ports.items()}
    )
    try:
        built = project.compose("build", *APP_SERVICES, timeout=1500)
        assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
        up = project.compose(
            "up", "-d", "--no-build", "--pull", "never", *APP_SERVICES, "prometheus",
            "postgres-exporter",
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        yield project, f"http://127.0.0.1:{ports['STOCKSTREAMER_PROMETHEUS_PORT']}"
    finally:
        project.down()


def prometheus_api(base: str, path: str) -> Any:
    response = httpx.get(f"{base}/api/v1/{path}", timeout=10)
    response.raise_for_status()
    return response.json()["data"]


@pytest.mark.timeout(1800)
def test_prometheus_sees_every_target_up_and_loads_the_rules(stack: tuple[Project, str]) -> None:
    project, base = stack
    deadline = time.monotonic() + 240
    health: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            targets = prometheus_api(base, "targets")["activeTargets"]
        except httpx.HTTPError:
            targets = []
        health = {t["labels"]["job"]: t["health"] for t in targets}
        if set(health) == JOBS and set(health.values()) == {"up"}:
            break
        time.sleep(2)
    logs = project.compose("logs", "--tail", "30").stdout
    assert health == dict.fromkeys(JOBS, "up"), f"{health}\n{logs[-6000:]}"

    groups = prometheus_api(base, "rules")["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(loaded) == {rule["alert"] for rule in alert_rules()}
    assert {rule["health"] for rule in loaded.values()} == {"ok"}, loaded

    # Live data flows through: ticks written, streamed by the API, database size reported.
    for query in (
        "stockstreamer_fetcher_ticks_written_total > 0",
        "stockstreamer_api_commit_to_send_seconds_count > 0",
        'pg_database_size_bytes{datname="stockstreamer"} > 0',
    ):
        deadline = time.monotonic() + 90
        while not prometheus_api(base, f"query?query={query}")["result"]:
            assert time.monotonic() < deadline, f"no result for {query}"
            time.sleep(3)
    firing = [a for a in prometheus_api(base, "alerts")["alerts"] if a["state"] == "firing"]
    assert firing == [], json.dumps(firing, indent=1)


def test_grafana_refuses_to_start_without_its_password(engine: str, tmp_path: Path) -> None:
    """Compose refuses a missing secret file; the entrypoint refuses an empty one."""
    # The entrypoint's check runs in the stack's postgres image: no Grafana needed for it.
    image = load_yaml(COMPOSE_FILE)["services"]["postgres"]["image"]
    override = tmp_path / "override.yaml"
    # restart "no": with the profile's policy the stand-in would be restarted, never "exited".
    override.write_text(json.dumps({"services": {"grafana": {"image": image, "restart": "no"}}}))
    project = Project(engine, tmp_path)
    password = Path(project.env["GRAFANA_ADMIN_PASSWORD_FILE"])

    def start() -> subprocess.CompletedProcess[str]:
        return project.compose(
            "-f", str(override), "up", "--no-deps", "--no-build", "--pull", "never",
            "--abort-on-container-exit", "grafana",
        )  # fmt: skip

    try:
        password.unlink()
        missing = start()
        assert missing.returncode != 0 and str(password) in missing.stdout + missing.stderr
        password.write_text("")
        empty = start()
        assert "GRAFANA_ADMIN_PASSWORD_FILE is empty or unreadable" in empty.stdout + empty.stderr
        password.write_text("a-long-random-password")
        password.chmod(0o644)
        present = start()
        output = present.stdout + present.stderr
        # Past the check, it hands over to Grafana's own /run.sh, absent from the stand-in.
        assert "empty or unreadable" not in output and "/run.sh" in output
    finally:
        project.compose("-f", str(override), "down", "-v", "--remove-orphans", "--timeout", "5")
