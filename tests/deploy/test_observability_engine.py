"""Grafana on a real Docker engine: its password made by the secrets one-shot, readable by its user
alone, and no start with an empty one (the profile's Prometheus and postgres_exporter, and
Grafana's networks reaching Prometheus, are tried with the stack in test_compose_engine.py)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from tests.deploy.compose import COMPOSE_FILE
from tests.deploy.engine import Project, require_engine


def test_grafana_starts_with_the_password_the_one_shot_made(tmp_path: Path) -> None:
    """No Grafana image here: its entrypoint's check runs in our image, as Grafana's user."""
    require_engine()
    image = f"stockstreamer-enginetest-{uuid.uuid4().hex[:8]}:local"
    empty = tmp_path / "empty"
    empty.write_text("")
    stand_in = {"image": image, "restart": "no", "user": "472:0"}
    override = tmp_path / "override.yaml"
    override.write_text(json.dumps({"services": {"grafana": stand_in}}))
    emptied = tmp_path / "emptied.yaml"
    emptied.write_text(
        json.dumps(
            {
                "services": {
                    "grafana": {
                        **stand_in,
                        "volumes": [f"{empty}:/run/secrets/grafana_admin_password:ro"],
                    }
                }
            }
        )
    )
    project = Project({"COMPOSE_PROFILES": "observability", "STOCKSTREAMER_IMAGE": image}, tmp_path)

    def start(extra: Path) -> str:
        result = project.compose(
            *("-f", str(COMPOSE_FILE), "-f", str(extra)),
            *("up", "--no-deps", "--no-build", "--pull", "never"),
            *("--abort-on-container-exit", "grafana"),
            check=False,
            timeout=120,
        )
        return result.stdout + result.stderr

    files = ("-f", str(COMPOSE_FILE), "-f", str(override))
    try:
        project.compose(*files, "up", "--build", "secrets", timeout=600)
        made = start(override)
        # Past the check, it hands over to Grafana's own /run.sh, absent from the stand-in.
        assert "empty or unreadable" not in made and "/run.sh" in made, made
        listing = project.compose(
            *files, "run", "--rm", "--no-deps", "--entrypoint", "ls", "grafana", "-ln",
            "/run/secrets",
        ).stdout  # fmt: skip
        (entry,) = [line.split() for line in listing.splitlines()[1:]]
        assert (entry[0], entry[2], entry[-1]) == ("-r--------", "472", "grafana_admin_password")
        assert int(entry[4]) >= 32, "a long random password"
        refused = start(emptied)
        assert "grafana_admin_password is empty or unreadable" in refused, refused
    finally:
        project.compose(*files, "down", "-v", "--remove-orphans", "--timeout", "5", check=False)
        subprocess.run(["docker", "image", "rm", image], capture_output=True, check=False)
