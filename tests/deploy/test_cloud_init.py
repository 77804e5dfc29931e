"""Render terraform/templates/cloud-init.yaml.tftpl with terraform itself and check the result."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "terraform" / "templates" / "cloud-init.yaml.tftpl"

VARS: dict[str, Any] = {
    "region": "eu-west-1",
    "arch": "arm64",
    "repository_url": "https://git.example.com/stockstreamer.git",
    "repository_ref": "v1.2.3",
    "site_address": "stocks.example.com",
    "public_host": "stocks.example.com",
    "public_origin": "https://stocks.example.com",
    "market_data_provider": "finnhub",
    "provider_key_parameter": "/stockstreamer/finnhub-api-key",
    "provider_key_env": "FINNHUB_API_KEY",
    "settings": {"STOCKSTREAMER_SYMBOLS": "AAPL,MSFT"},
    "use_rds": True,
    "rds_secret_arn": "arn:aws:secretsmanager:eu-west-1:111122223333:secret:rds!db-1",
    "rds_address": "db.example.internal",
    "rds_port": 5432,
    "db_name": "stockstreamer",
}


def render(tmp_path: Path, **overrides: Any) -> str:
    """templatefile() evaluated by `terraform console` (needs no providers, no network)."""
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("SKIPPED: no terraform binary on PATH to evaluate templatefile()")
    args = json.dumps({**VARS, **overrides})
    expression = f"templatefile({json.dumps(str(TEMPLATE))}, jsondecode({json.dumps(args)}))"
    result = subprocess.run(  # noqa: S603
        [terraform, "console"],
        input=f"jsonencode({expression})\n",
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # console prints the JSON-encoded string as an HCL string literal: decode both layers.
    rendered: str = json.loads(json.loads(result.stdout.strip()))
    return rendered


def files(config: dict[str, Any]) -> dict[str, str]:
    return {f["path"]: f["content"] for f in config["write_files"]}


def test_renders_valid_cloud_config(tmp_path: Path) -> None:
    text = render(tmp_path)
    assert text.startswith("#cloud-config\n")
    config = yaml.safe_load(text)
    assert {"docker-ce", "docker-compose-plugin", "docker-buildx-plugin"} <= set(config["packages"])
    docker_repo = config["apt"]["sources"]["docker.list"]
    assert "arch=arm64" in docker_repo["source"]
    # Egress is 80/443 only, so every URL the instance fetches must use one of them.
    assert docker_repo["keyserver"].endswith(":80")
    wait = config["bootcmd"][0]
    assert wait[:2] == ["bash", "-c"] and "meta-data/public-ipv4" in wait[2]
    assert "X-aws-ec2-metadata-token:" in wait[2], "IMDSv2 needs the session token"
    check = subprocess.run(  # noqa: S603
        [shutil.which("bash") or "bash", "-n", "-c", wait[2]], capture_output=True, check=False
    )
    assert check.returncode == 0, check.stderr
    runcmd = [" ".join(map(str, c)) for c in config["runcmd"]]
    assert any("https://git.example.com/stockstreamer.git" in c for c in runcmd)
    assert any("fetch -q --depth 1 origin v1.2.3" in c for c in runcmd)
    assert runcmd[-2:] == [
        "systemctl enable --now stockstreamer.service",
        "systemctl enable --now stockstreamer-refresh.timer",
    ]
    unit = files(config)["/etc/systemd/system/stockstreamer.service"]
    assert "ExecStart=/usr/bin/docker compose up -d" in unit
    assert "WantedBy=multi-user.target" in unit
    assert "STOCKSTREAMER_SYMBOLS=AAPL,MSFT" in files(config)["/etc/stockstreamer/settings.env"]
    # The compose files the instance stacks exist in the repository it clones.
    script = files(config)["/usr/local/sbin/stockstreamer-env"]
    for name in re.findall(r"[\w/.-]+\.ya?ml", script):
        assert (ROOT / name).is_file(), name
    assert "deploy/compose.server.yaml" in script and "deploy/compose.rds.yaml" in script


def test_scripts_are_valid_bash(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    for path, content in files(yaml.safe_load(render(tmp_path))).items():
        if content.startswith("#!/bin/bash"):
            result = subprocess.run(  # noqa: S603
                [bash, "-n"], input=content, capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, f"{path}: {result.stderr}"


def test_without_rds_or_key_nothing_is_fetched(tmp_path: Path) -> None:
    text = render(
        tmp_path,
        use_rds=False,
        rds_secret_arn="",
        rds_address="",
        provider_key_parameter="",
        market_data_provider="simulated",
        settings={},
    )
    config = yaml.safe_load(text)
    assert "stockstreamer-refresh.timer" not in text
    deploy_env = files(config)["/etc/stockstreamer/deploy.env"]
    assert "PROVIDER_KEY_PARAMETER=\n" in deploy_env and "RDS_SECRET_ARN=\n" in deploy_env


def test_env_writer_names_every_setting_it_writes(tmp_path: Path) -> None:
    """Names the boot script writes into .env are settings or compose variables, as documented."""
    script = files(yaml.safe_load(render(tmp_path)))["/usr/local/sbin/stockstreamer-env"]
    example = (ROOT / ".env.example").read_text()
    written = {
        line.split('echo "', 1)[1].split("=", 1)[0]
        for line in script.splitlines()
        if 'echo "' in line and "=" in line and not line.strip().startswith('echo "#')
    }
    written.discard("$PROVIDER_KEY_ENV")
    assert written, script
    for name in written:
        assert f"{name}=" in example, f"{name} is written on the instance but not in .env.example"
