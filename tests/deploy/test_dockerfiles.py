"""The services' Dockerfiles: hadolint-clean, pinned, non-root, healthy, and run like `make run`."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.compose import COMPOSE_FILE, ROOT, load_yaml

SERVICES = ("fetcher", "api", "dashboard")
DOCKERFILES = [ROOT / "services" / s / "Dockerfile" for s in SERVICES]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(  # noqa: S603
        [str(hadolint), "--failure-threshold", "style", *map(str, DOCKERFILES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("service", SERVICES)
def test_image_is_pinned_multi_stage_and_unprivileged(service: str) -> None:
    steps = instructions(ROOT / "services" / service / "Dockerfile")
    bases = [args.split()[0] for op, args in steps if op == "FROM"]
    assert len(bases) >= 2, "build and runtime stages"
    for base in bases:
        assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", base), f"{base} is not pinned"
    runtime = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    users = [args for op, args in runtime if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "runs as a non-root user"
    run = " ".join(args for op, args in steps if op == "RUN")
    assert "-c requirements.lock" in run, "dependencies at the project's pins"
    assert "[dev]" not in run and "-e " not in run


@pytest.mark.parametrize("service", SERVICES)
def test_no_secret_is_baked_in(service: str) -> None:
    for op, args in instructions(ROOT / "services" / service / "Dockerfile"):
        if op in ("ENV", "ARG"):
            names = re.findall(r"([A-Z_][A-Z0-9_]*)=", args) or [args.split()[0]]
            secret = [n for n in names if re.search(r"KEY|PASSWORD|SECRET|TOKEN|DATABASE_URL", n)]
            assert not secret, f"{service} bakes {secret} into the image"
        if op in ("COPY", "ADD"):
            assert ".env" not in args.split()


@pytest.mark.parametrize("service", SERVICES)
def test_command_healthcheck_and_port_match_compose(service: str) -> None:
    steps = dict(instructions(ROOT / "services" / service / "Dockerfile"))
    compose = load_yaml(COMPOSE_FILE)["services"][service]
    procfile = dict(ln.split(":", 1) for ln in (ROOT / "Procfile").read_text().splitlines() if ln)
    assert service in procfile, f"Procfile has no `{service}:` line"
    assert json.loads(steps["CMD"]) == shlex.split(procfile[service]) == compose["command"]
    port = steps["EXPOSE"]
    assert f"http://127.0.0.1:{port}/healthz" in steps["HEALTHCHECK"]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(compose["healthcheck"]["test"])


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    ignored = {ln.strip().rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    required = {".git", ".venv", ".data", ".env", "tests", "terraform", "docs", "**/__pycache__"}
    assert required <= ignored, required - ignored
    assert not [ln for ln in ignored if ln.startswith("!")], "nothing re-included"
    for needed in ("services", "db", "pyproject.toml", "requirements.lock"):
        assert needed not in ignored
