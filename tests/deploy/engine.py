"""docker-compose.yml on a real Docker engine: one project of its own, on free host ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.deploy.compose import ROOT
from tests.utils.tools import missing


def engine_answers() -> str | None:
    """Why no engine can be used here, or None when `docker info` and Compose v2 answer."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker CLI on PATH"
    for argv in ([docker, "info"], [docker, "compose", "version"]):
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
        except subprocess.TimeoutExpired:
            return f"`{' '.join(argv[1:])}` did not answer in 30 s"
        if result.returncode != 0:
            return f"`docker {' '.join(argv[1:])}` failed: {result.stderr.strip()[-300:]}"
    return None


def require_engine() -> None:
    """Skip without an engine; fail in CI (which starts one), so it never silently passes."""
    reason = engine_answers()
    if reason is None:
        return
    missing(f"no Docker engine: {reason} (.ci/run starts one)")


def clean_clone(into: Path) -> Path:
    """The files `git clone` would bring (uncommitted edits and new files included, ignored ones
    such as .env and secrets/ left out), copied into `into`."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],  # noqa: S607
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if not source.exists():  # deleted, not yet committed
            continue
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return into


class Project:
    """`docker compose` for one uniquely named project, with its own environment, run in `cwd`
    (the repository, or a clean clone of it)."""

    def __init__(self, env: Mapping[str, str], workdir: Path, cwd: Path = ROOT) -> None:
        self.cwd = cwd
        self.name = f"stockstreamer-enginetest-{uuid.uuid4().hex[:8]}"
        # An empty env file: a developer's .env must not change what the test brings up.
        empty = workdir / "compose.env"
        empty.write_text("")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "STOCK"))},
            "DOCKER_BUILDKIT": "0",  # the classic builder needs no registry for frontends
            "COMPOSE_PROJECT_NAME": self.name,
            "COMPOSE_ENV_FILES": str(empty),
            **env,
        }

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 120,
        stdin: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """A command in the project's directory with this project's environment."""
        result = subprocess.run(  # noqa: S603
            list(argv),
            cwd=self.cwd,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout}\n{result.stderr}"
        return result

    def compose(
        self, *args: str, timeout: float = 120, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.run(["docker", "compose", *args], timeout=timeout, check=check, stdin=stdin)

    def psql(self, script: str, **variables: object) -> list[list[str]]:
        """Rows of a psql script run as the superuser in the postgres container (`:'name'` vars)."""
        args = [a for name, value in variables.items() for a in ("-v", f"{name}={value}")]
        out = self.compose(
            "exec",
            "-T",
            "postgres",
            "psql",
            "-U",
            "stockstreamer",
            "-d",
            "stockstreamer",
            "--no-psqlrc",
            "-At",
            "-F",
            "\t",
            "-v",
            "ON_ERROR_STOP=1",
            *args,
            "-f",
            "-",
            stdin=script,
        ).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def container(self, service: str) -> str:
        ids = self.compose("ps", "-aq", service).stdout.split()
        assert len(ids) == 1, f"{service}: {ids}"
        return ids[0]

    def inspect(self, service: str, template: str) -> str:
        result = self.run(["docker", "inspect", "-f", template, self.container(service)])
        return result.stdout.strip()

    def wait_healthy(self, service: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.inspect(service, "{{.State.Status}} {{.State.Health.Status}}")
            if state == "running healthy":
                return
            time.sleep(0.5)
        raise AssertionError(f"{service} not healthy in {timeout} s ({state}):\n{self.logs()}")

    def logs(self, tail: int = 40) -> str:
        return self.compose("logs", "--no-color", "--tail", str(tail), check=False).stdout

    def down(self) -> None:
        """Everything of the project, whichever profiles brought it up."""
        self.compose(
            "--profile",
            "*",
            "down",
            "--volumes",
            "--remove-orphans",
            "--timeout",
            "20",
            timeout=180,
        )
