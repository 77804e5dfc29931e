"""Grafana on a real Docker engine: no start without its password (the profile's Prometheus and
postgres_exporter are brought up with the stack in test_compose_engine.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.deploy.compose import COMPOSE_FILE, load_yaml
from tests.deploy.engine import Project, require_engine


def test_grafana_refuses_to_start_without_its_password(tmp_path: Path) -> None:
    """Compose refuses a missing secret file; the entrypoint refuses an empty one."""
    require_engine()
    # The entrypoint's check runs in the stack's postgres image: no Grafana needed for it.
    image = load_yaml(COMPOSE_FILE)["services"]["postgres"]["image"]
    override = tmp_path / "override.yaml"
    # restart "no": with the profile's policy the stand-in would be restarted, never "exited".
    override.write_text(json.dumps({"services": {"grafana": {"image": image, "restart": "no"}}}))
    password = tmp_path / "grafana-admin-password"
    project = Project(
        {"COMPOSE_PROFILES": "observability", "GRAFANA_ADMIN_PASSWORD_FILE": str(password)},
        tmp_path,
    )
    files = ("-f", str(COMPOSE_FILE), "-f", str(override))

    def start() -> subprocess.CompletedProcess[str]:
        return project.compose(
            *files,
            "up",
            "--no-deps",
            "--no-build",
            "--pull",
            "never",
            "--abort-on-container-exit",
            "grafana",
            check=False,
        )

    try:
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
        project.compose(*files, "down", "-v", "--remove-orphans", "--timeout", "5", check=False)
