"""checkov over terraform/: zero failed checks, with and without RDS, and in the scale-out mode;
every skip explained."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = ROOT / "terraform"
CHECKOV = ROOT / ".venv" / "tools" / "bin" / "checkov"


@pytest.fixture(scope="session")
def checkov() -> Path:
    """checkov from its own venv (`make tools`): its pins clash with the project's."""
    make = shutil.which("make")
    assert make is not None, "make is needed to install the deployment tools"
    result = subprocess.run(  # noqa: S603
        [make, "--no-print-directory", "-C", str(ROOT), "tools"],
        capture_output=True,
        text=True,
        check=False,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert CHECKOV.exists()
    return CHECKOV


def run_checkov(checkov: Path, *args: str) -> dict[str, Any]:
    # --skip-download: offline, no calls to the vendor's platform.
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    result = subprocess.run(  # noqa: S603
        [
            str(checkov),
            "-d",
            str(TERRAFORM_DIR),
            "--framework",
            "terraform",
            "--skip-download",
            "-o",
            "json",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=120,
    )
    assert result.stdout.strip(), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


# Resources checkov sees only in one half of the configuration (their count follows variables).
SCANNED = {
    "rds.tfvars": {"aws_db_instance.this[0]"},
    "scale_out.tfvars": {
        "aws_db_instance.this[0]",
        "aws_vpc_security_group_ingress_rule.rds_from_web[0]",
        "aws_vpc_security_group_egress_rule.web_postgres[0]",
        "aws_lb.web",
        "aws_autoscaling_group.web",
        "aws_launch_template.web",
    },
}


@pytest.mark.parametrize("var_file", [None, "rds.tfvars", "scale_out.tfvars"])
def test_checkov_finds_nothing(checkov: Path, var_file: str | None) -> None:
    args = ["--var-file", str(Path(__file__).parent / var_file)] if var_file else []
    report = run_checkov(checkov, *args)
    results = report["results"]
    failed = [
        f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert report["summary"]["passed"] > 50, "checkov scanned the configuration"
    if var_file:
        scanned = {c["resource"] for c in results["passed_checks"]}
        assert SCANNED[var_file] <= scanned, f"{var_file}: {SCANNED[var_file] - scanned} unscanned"


def test_every_skip_is_justified() -> None:
    for path in TERRAFORM_DIR.rglob("*.tf"):
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                match = re.search(r"#checkov:skip=(CKV2?_AWS_\d+):(.{20,})$", line.strip())
                assert match, f"{path.name}: skip without a reason: {line.strip()}"
