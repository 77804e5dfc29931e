"""Grafana on a real Docker engine: no start without its password (the profile's Prometheus and
postgres_exporter are brought up with the stack in test_compose_engine.py)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.compose import COMPOSE_FILE, ROOT, load_yaml

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
            "-f",
            str(override),
            "up",
            "--no-deps",
            "--no-build",
            "--pull",
            "never",
            "--abort-on-container-exit",
            "grafana",
        )

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
