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

from tests.utils.tools import require_tool

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
    "provider_key_file": "finnhub-api-key",
    "settings": {"STOCKSTREAMER_SYMBOLS": "AAPL,MSFT"},
    "data_device": "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0",
    "backup_keep": 14,
    "use_rds": True,
    "rds_secret_arn": "arn:aws:secretsmanager:eu-west-1:111122223333:secret:rds!db-1",
    "rds_address": "db.example.internal",
    "rds_port": 5432,
    "db_name": "stockstreamer",
    "compose_profiles": "proxy",
    "grafana_route": "off",
    "grafana_root_url": "",
}


WITHOUT_RDS: dict[str, Any] = {
    "use_rds": False,
    "rds_secret_arn": "",
    "rds_address": "",
    "provider_key_parameter": "",
    "market_data_provider": "simulated",
    "provider_key_file": "simulated-api-key",
    "settings": {},
}

# observability = true on the HTTPS site: Grafana under /grafana/ (terraform refuses it with RDS).
OBSERVABILITY: dict[str, Any] = {
    **WITHOUT_RDS,
    "compose_profiles": "proxy,observability",
    "grafana_route": "on",
    "grafana_root_url": "https://stocks.example.com/grafana/",
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
        "systemctl enable --now stockstreamer-db-tokens.timer",
        "systemctl enable --now --no-block stockstreamer.service",
    ]
    assert "STOCKSTREAMER_SYMBOLS=AAPL,MSFT" in files(config)["/etc/stockstreamer/settings.env"]
    # The compose files and scripts the instance uses exist in the repository it clones.
    script = files(config)["/usr/local/sbin/stockstreamer-env"]
    for name in re.findall(r"(?:deploy/)[\w.-]+|[\w/.-]+\.ya?ml", script):
        assert (ROOT / name).is_file(), name
    assert "deploy/compose.server.yaml" in script and "deploy/compose.rds.yaml" in script


def test_user_data_passes_cloud_init_schema(tmp_path: Path) -> None:
    """Debian's cloud-init validates both renderings (.ci/run installs it)."""
    cloud_init = require_tool("cloud-init", package="cloud-init")
    for name, overrides in (("rds", {}), ("container", WITHOUT_RDS), ("obs", OBSERVABILITY)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(render(tmp_path, **overrides))
        result = subprocess.run(  # noqa: S603
            [cloud_init, "schema", "--config-file", str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
        assert "Valid cloud-config" in result.stdout


def test_unit_retries_with_back_off_and_prunes_images(tmp_path: Path) -> None:
    unit = files(yaml.safe_load(render(tmp_path)))["/etc/systemd/system/stockstreamer.service"]
    lines = set(unit.splitlines())
    assert "ExecStart=/usr/bin/docker compose up -d --build --remove-orphans --wait" in lines
    assert {"Restart=on-failure", "StartLimitIntervalSec=0", "RestartSteps=6"} <= lines
    assert any(line.startswith("RestartMaxDelaySec=") for line in lines), "a back-off"
    assert "ExecStartPost=/usr/bin/docker image prune --force" in lines
    assert "RequiresMountsFor=/var/lib/stockstreamer" in lines
    assert not [line for line in lines if "compose down" in line], "no stop cuts every client"
    assert "WantedBy=multi-user.target" in lines


def test_data_volume_is_formatted_once_and_mounted(tmp_path: Path) -> None:
    config = yaml.safe_load(render(tmp_path))
    (fs,) = config["fs_setup"]
    assert fs["device"] == VARS["data_device"] and fs["overwrite"] is False
    (mount,) = config["mounts"]
    assert mount[:2] == [f"LABEL={fs['label']}", "/var/lib/stockstreamer"]
    assert any(VARS["data_device"] in " ".join(map(str, c)) for c in config["bootcmd"])
    script = files(config)["/usr/local/sbin/stockstreamer-env"]
    assert 'mountpoint -q "$data"' in script, "never the root disk by mistake"


def test_rds_logins_use_verified_tls_and_renewed_iam_tokens(tmp_path: Path) -> None:
    config = yaml.safe_load(render(tmp_path))
    written = files(config)
    tokens = written["/usr/local/sbin/stockstreamer-db-tokens"]
    assert "aws rds generate-db-auth-token" in tokens
    for user in ("stockstreamer_fetcher", "stockstreamer_api"):
        assert user.split("_")[1] in tokens
    env = written["/usr/local/sbin/stockstreamer-env"]
    for script in (tokens, env):
        assert script.count("sslmode=verify-full&sslrootcert=/etc/ssl/rds-ca.pem") == 1
    assert "truststore.pki.rds.amazonaws.com" in env
    timer = written["/etc/systemd/system/stockstreamer-db-tokens.timer"]
    assert "OnUnitActiveSec=5min" in timer, "renewed well within a token's 15 minutes"
    assert not [p for p in written if "refresh" in p], "no daily restart"


def test_container_database_is_dumped_daily(tmp_path: Path) -> None:
    written = files(yaml.safe_load(render(tmp_path, **WITHOUT_RDS)))
    service = written["/etc/systemd/system/stockstreamer-backup.service"]
    assert "ExecStart=/opt/stockstreamer/deploy/backup /var/lib/stockstreamer/backups" in service
    assert "STOCKSTREAMER_BACKUP_KEEP=14" in service
    assert "OnCalendar=" in written["/etc/systemd/system/stockstreamer-backup.timer"]
    assert "/etc/systemd/system/stockstreamer-db-tokens.timer" not in written


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
    text = render(tmp_path, **WITHOUT_RDS)
    config = yaml.safe_load(text)
    assert "stockstreamer-db-tokens.timer" not in text
    deploy_env = files(config)["/etc/stockstreamer/deploy.env"]
    assert "PROVIDER_KEY_PARAMETER=\n" in deploy_env and "RDS_SECRET_ARN=\n" in deploy_env


def test_env_writer_names_every_setting_it_writes(tmp_path: Path) -> None:
    """Names the boot script writes into .env are settings or compose variables, as documented."""
    script = files(yaml.safe_load(render(tmp_path)))["/usr/local/sbin/stockstreamer-env"]
    example = (ROOT / ".env.example").read_text()
    written = set(re.findall(r'"((?:STOCKSTREAMER|COMPOSE)_[A-Z_]+)=', script))
    assert written, script
    assert "KEY" not in " ".join(written) and "PASSWORD" not in " ".join(written), ".env is shared"
    for name in written:
        assert f"{name}=" in example, f"{name} is written on the instance but not in .env.example"


def env_writer(tmp_path: Path, **overrides: Any) -> str:
    """The .env stockstreamer-env writes, from the deploy.env terraform renders.

    Runs the script's .env block alone (the rest needs the instance: mounts, AWS, secrets).
    """
    written = files(yaml.safe_load(render(tmp_path, **overrides)))
    script = written["/usr/local/sbin/stockstreamer-env"]
    block = re.search(r"^\{\n(.+?)^\} >\.env\.new$", script, re.MULTILINE | re.DOTALL)
    assert block, script
    deploy_env = tmp_path / "deploy.env"
    deploy_env.write_text(written["/etc/stockstreamer/deploy.env"])
    settings_env = tmp_path / "settings.env"
    settings_env.write_text(written["/etc/stockstreamer/settings.env"])
    program = "\n".join(
        [
            "set -euo pipefail",
            f". {deploy_env}",
            "compose_file=x secrets=/s data=/d rds=()",
            "{",
            block[1].replace("/etc/stockstreamer/settings.env", str(settings_env)),
            "}",
        ]
    )
    result = subprocess.run(  # noqa: S603
        [shutil.which("bash") or "bash", "-c", program],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_observability_switches_the_profile_and_the_grafana_route(tmp_path: Path) -> None:
    default = env_writer(tmp_path, **WITHOUT_RDS).splitlines()
    assert "COMPOSE_PROFILES=proxy" in default
    assert "STOCKSTREAMER_GRAFANA_ROUTE=off" in default
    assert not [line for line in default if "GRAFANA_ROOT_URL" in line or "COOKIE" in line]
    public = env_writer(tmp_path, **OBSERVABILITY).splitlines()
    assert "COMPOSE_PROFILES=proxy,observability" in public
    assert "STOCKSTREAMER_GRAFANA_ROUTE=on" in public
    assert "STOCKSTREAMER_GRAFANA_ROOT_URL=https://stocks.example.com/grafana/" in public
    assert "STOCKSTREAMER_GRAFANA_COOKIE_SECURE=true" in public
    # Plain HTTP (no domain): the profile runs, Grafana stays on the instance's loopback.
    loopback = env_writer(
        tmp_path, **{**OBSERVABILITY, "grafana_route": "off", "grafana_root_url": ""}
    ).splitlines()
    assert "COMPOSE_PROFILES=proxy,observability" in loopback
    assert "STOCKSTREAMER_GRAFANA_ROUTE=off" in loopback
    assert not [line for line in loopback if "GRAFANA_ROOT_URL" in line]
    # Only names and URLs: the Grafana password is made on the instance (deploy/make-secrets).
    assert not [line for line in public if "PASSWORD" in line.split("=")[0]]
