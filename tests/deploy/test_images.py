"""deploy/images.lock pins every image by digest; deploy/pull-pinned-images puts them in place.

The script is run against a real registry on loopback (Debian's `docker-registry`), with small
images of our own pushed there, since no public registry is reachable from the tests.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.runner.embedded_db import free_port
from tests.deploy.compose import COMPOSE_FILE, OBSERVABILITY_COMPOSE, ROOT, load_yaml
from tests.deploy.engine import require_engine
from tests.deploy.test_dockerfiles import DOCKERFILE, instructions
from tests.utils.tools import require_tool

LOCK = ROOT / "deploy" / "images.lock"
SCRIPT = ROOT / "deploy" / "pull-pinned-images"
PINNED = re.compile(r"(?P<tag>[a-z0-9][^@\s]*:[\w][\w.-]*)@sha256:[0-9a-f]{64}")
OURS = "${STOCKSTREAMER_IMAGE:-stockstreamer:local}"


def lock_entries(path: Path = LOCK) -> list[str]:
    lines = (ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln]


def images_used() -> set[str]:
    """Every image the Dockerfile builds FROM and the compose files run, ours excepted."""
    steps = instructions(DOCKERFILE)
    stages = {args.split()[-1] for op, args in steps if op == "FROM" and " AS " in args.upper()}
    used = {args.split()[0] for op, args in steps if op == "FROM"} - stages
    for path in (COMPOSE_FILE, OBSERVABILITY_COMPOSE):
        used |= {s["image"] for s in load_yaml(path)["services"].values() if "image" in s}
    return used - {OURS}


def test_every_image_used_has_exactly_one_pin() -> None:
    entries = lock_entries()
    assert all(PINNED.fullmatch(e) for e in entries), entries
    tags = [PINNED.fullmatch(e)["tag"] for e in entries]  # type: ignore[index]
    assert sorted(tags) == sorted(images_used()), "one pin per image, and none unused"
    assert len(set(tags)) == len(tags)


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result


def pull_pinned(lock: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), str(lock)], capture_output=True, text=True, timeout=300, check=False
    )


class Registry:
    """A registry on a free loopback port (Docker trusts 127.0.0.0/8 over plain HTTP)."""

    def __init__(self, binary: str, directory: Path) -> None:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        config = directory / "registry.yml"
        config.write_text(
            "version: 0.1\n"
            f"storage:\n  filesystem:\n    rootdirectory: {directory / 'storage'}\n"
            f"http:\n  addr: {self.address}\n"
            "log:\n  level: error\n"
        )
        self.server = subprocess.Popen(
            [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while not self.answers():
            assert time.monotonic() < deadline, "the registry did not start"
            time.sleep(0.2)

    def answers(self) -> bool:
        try:
            return httpx.get(f"http://{self.address}/v2/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.server.poll() is None:
            self.server.terminate()
            self.server.wait(timeout=30)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    require_engine()
    server = Registry(require_tool("docker-registry", package="docker-registry"), tmp_path)
    try:
        yield server
    finally:
        server.stop()


def push_image(registry: str, name: str, tmp_path: Path) -> str:
    """A one-file image of its own pushed as `registry/name`: its `repo@sha256:…`, which the
    engine then no longer has."""
    content = tmp_path / uuid.uuid4().hex
    content.write_text(name)
    ref = f"{registry}/{name}"
    tar = subprocess.run(
        ["tar", "-c", "-C", str(tmp_path), content.name], capture_output=True, check=True
    )
    imported = subprocess.run(
        ["docker", "import", "-", ref], input=tar.stdout, capture_output=True, check=True
    )
    assert imported.returncode == 0
    docker("push", ref)
    pin = docker("image", "inspect", "-f", "{{index .RepoDigests 0}}", ref).stdout.strip()
    docker("image", "rm", ref)
    assert docker("image", "inspect", pin, check=False).returncode != 0
    return pin


def image_id(ref: str) -> str | None:
    result = docker("image", "inspect", "-f", "{{.Id}}", ref, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def test_pulls_by_digest_and_tags_only_when_every_image_is_had(
    registry: Registry, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    repo = f"{registry.address}/pinned-{run}"
    pins = {
        f"{repo}/first:v1": push_image(registry.address, f"pinned-{run}/first:1", tmp_path),
        f"{repo}/second:v2": push_image(registry.address, f"pinned-{run}/second:1", tmp_path),
    }
    lines = [f"{tag}@{pin.split('@')[1]}  # why this one\n" for tag, pin in pins.items()]
    lock = tmp_path / "images.lock"
    try:
        lock.write_text(f"# pins\n{repo}/first:v1@latest\n")
        bad = pull_pinned(lock)
        assert bad.returncode == 2 and "images.lock:2 is not NAME:TAG@sha256" in bad.stderr

        # Both are pulled by digest, the third is not in the registry: no tag is set.
        absent = f"{repo}/absent@sha256:{'0' * 64}"
        lock.write_text("".join(lines) + f"{repo}/absent:v3@sha256:{'0' * 64}\n")
        failed = pull_pinned(lock)
        assert failed.returncode == 1 and f"cannot pull {absent}" in failed.stderr, failed.stderr
        assert [image_id(tag) for tag in pins] == [None, None], "no tag set"
        assert all(image_id(pin) for pin in pins.values()), "pulled by digest"

        # Now with every image here, no registry is needed (a server restarting offline).
        registry.stop()
        lock.write_text("".join(lines))
        done = pull_pinned(lock)
        assert done.returncode == 0, done.stderr
        for tag, pin in pins.items():
            assert image_id(tag) is not None and image_id(tag) == image_id(pin), tag
            assert f"{tag} -> {pin}" in done.stdout
    finally:
        for ref in [*pins, *pins.values()]:
            docker("image", "rm", ref, check=False)
