"""Render terraform/templates/cloud-init.yaml.tftpl with terraform itself and check the result."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.secrets import SECRETS
from tests.utils.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "terraform" / "templates" / "cloud-init.yaml.tftpl"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

VARS: dict[str, Any] = {
    "region": "eu-west-1",
    "arch": "arm64",
    "repository_url": "https://git.example.com/stockstreamer.git",
    "repository_commit": COMMIT,
    "site_address": "stocks.example.com",
    "public_host": "stocks.example.com",
    "public_origin": "https://stocks.example.com",
    "market_data_provider": "alpaca,finnhub",
    "history_provider": "alpaca",
    "calendar": "XNYS",
    "extended_hours": True,
    "vendor_key_parameters": {
        "alpaca-api-key-id": "/stockstreamer/alpaca-api-key-id",
        "alpaca-api-secret-key": "/stockstreamer/alpaca-api-secret-key",
        "finnhub-api-key": "/stockstreamer/finnhub-api-key",
    },
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
    "edge_rate": 10,
    "edge_burst": 40,
    "edge_connections": 64,
    # api_instances = 1: the whole stack on one instance.
    "role": "all",
    "compose_services": [],
    "db_token_services": ["fetcher", "api", "alerts"],
    "load_balancer_networks": "",
    "api_token_parameter": "/stockstreamer/api-token",
}


WITHOUT_RDS: dict[str, Any] = {
    "use_rds": False,
    "rds_secret_arn": "",
    "rds_address": "",
    "market_data_provider": "simulated",
    "history_provider": "",
    "calendar": "",
    "extended_hours": False,
    "vendor_key_parameters": {},
    "settings": {},
}

# observability = true on the HTTPS site: Grafana under /grafana/ (terraform refuses it with RDS).
OBSERVABILITY: dict[str, Any] = {
    **WITHOUT_RDS,
    "compose_profiles": "proxy,observability",
    "grafana_route": "on",
    "grafana_root_url": "https://stocks.example.com/grafana/",
}


# api_instances > 1: the instance that runs what must run once (RDS required)...
SINGLETON: dict[str, Any] = {
    "role": "singleton",
    "compose_profiles": "",
    "compose_services": ["fetcher", "alerts"],
    "db_token_services": ["fetcher", "alerts"],
}

# ... and an API instance behind the load balancer: no data volume, no key, no master secret.
WEB: dict[str, Any] = {
    "role": "web",
    "arch": "amd64",
    "vendor_key_parameters": {},
    "data_device": "",
    "rds_secret_arn": "",
    "compose_profiles": "",
    "compose_services": ["api", "dashboard"],
    "db_token_services": ["api"],
    "load_balancer_networks": "172.31.0.0/20,172.31.16.0/20",
}

ROLES = {"all": {}, "singleton": SINGLETON, "web": WEB}


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
    deploy_env = files(config)["/etc/stockstreamer/deploy.env"].splitlines()
    assert "REPOSITORY_URL=https://git.example.com/stockstreamer.git" in deploy_env
    assert f"REPOSITORY_COMMIT={COMMIT}" in deploy_env
    assert runcmd[:3] == [
        "systemctl daemon-reload",
        "systemctl enable --now stockstreamer-edge-firewall.service",
        "/usr/local/sbin/stockstreamer-checkout",
    ], "the limits first, then the code"
    assert runcmd[-2:] == [
        "systemctl enable --now stockstreamer-db-tokens.timer",
        "systemctl enable --now --no-block stockstreamer.service",
    ]
    assert "STOCKSTREAMER_SYMBOLS=AAPL,MSFT" in files(config)["/etc/stockstreamer/settings.env"]
    # The compose files and scripts the instance uses exist in the repository it clones.
    script = files(config)["/usr/local/sbin/stockstreamer-env"]
    secret_files = {secret.name for secret in SECRETS}  # alert-channels.yaml is one
    for name in re.findall(r"(?:deploy/)[\w.-]+|[\w/.-]+\.ya?ml", script):
        assert name in secret_files or (ROOT / name).is_file(), name
    assert "deploy/compose.server.yaml" in script and "deploy/compose.rds.yaml" in script


def test_user_data_passes_cloud_init_schema(tmp_path: Path) -> None:
    """Debian's cloud-init validates every rendering (.ci/run installs it)."""
    cloud_init = require_tool("cloud-init", package="cloud-init")
    renderings: tuple[tuple[str, dict[str, Any]], ...] = (
        ("rds", {}),
        ("container", WITHOUT_RDS),
        ("obs", OBSERVABILITY),
        ("singleton", SINGLETON),
        ("web", WEB),
    )
    for name, overrides in renderings:
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
    # Every start and every reload: the deployed commit, .env and secrets, the pinned images.
    prepare = [
        "/usr/local/sbin/stockstreamer-checkout",
        "/usr/local/sbin/stockstreamer-env",
        "/opt/stockstreamer/deploy/pull-pinned-images",
        "/usr/bin/docker compose up -d --build --remove-orphans --wait",
    ]
    ordered = unit.splitlines()
    starts = [line.split("=", 1)[1] for line in ordered if re.match(r"ExecStart(Pre)?=", line)]
    reloads = [line.split("=", 1)[1] for line in ordered if line.startswith("ExecReload=")]
    assert starts == prepare
    assert reloads[: len(prepare)] == prepare
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
    assert "for service in fetcher api alerts; do" in tokens
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


@pytest.mark.parametrize("role", ROLES)
def test_scripts_are_valid_bash(tmp_path: Path, role: str) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    for path, content in files(yaml.safe_load(render(tmp_path, **ROLES[role]))).items():
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
    assert "RDS_SECRET_ARN=\n" in deploy_env
    listing = files(config)["/etc/stockstreamer/vendor-keys"]
    assert [line for line in listing.splitlines() if not line.startswith("#")] == []


def key_reader(tmp_path: Path, **overrides: Any) -> tuple[str, Path]:
    """The boot script's vendor-key loop alone, with its listing as rendered and `put` writing
    under tmp_path (the rest of the script needs the instance)."""
    written = files(yaml.safe_load(render(tmp_path, **overrides)))
    script = written["/usr/local/sbin/stockstreamer-env"]
    loop = re.search(
        r"^while read -r file parameter; do\n.+?^done < <\([^\n]+\)$", script, re.M | re.S
    )
    assert loop, script
    listing = tmp_path / "vendor-keys"
    listing.write_text(written["/etc/stockstreamer/vendor-keys"])
    program = "\n".join(
        [
            "set -euo pipefail",
            "AWS_REGION=eu-west-1 secrets=" + str(tmp_path / "secrets"),
            'put() { cat >"$secrets/$1"; }',
            loop[0].replace("/etc/stockstreamer/vendor-keys", str(listing)),
        ]
    )
    return program, listing


def run_key_reader(
    tmp_path: Path, program: str, fail: str = ""
) -> subprocess.CompletedProcess[str]:
    """With an `aws` that answers each parameter's name, as SSM would its value (text output)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    aws = bin_dir / "aws"
    aws.write_text(
        "#!/bin/bash\n"
        'while [ $# -gt 0 ]; do [ "$1" = --name ] && name=$2; shift; done\n'
        f'[ "$name" != "{fail}" ] || {{ echo "ParameterNotFound" >&2; exit 254; }}\n'
        'echo "value of $name"\n'
    )
    aws.chmod(0o755)
    return subprocess.run(  # noqa: S603
        [shutil.which("bash") or "bash", "-c", program],
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def test_each_vendor_key_is_read_into_its_own_file(tmp_path: Path) -> None:
    program, _ = key_reader(tmp_path)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    result = run_key_reader(tmp_path, program)
    assert result.returncode == 0, result.stderr
    parameters: dict[str, str] = VARS["vendor_key_parameters"]
    assert {p.name: p.read_text() for p in secrets.iterdir()} == {
        file: f"value of {name}" for file, name in parameters.items()
    }, "each key whole, without the CLI's newline"
    # A parameter that cannot be read fails the start, and the key kept from before stays.
    (secrets / "finnhub-api-key").write_text("kept")
    failed = run_key_reader(tmp_path, program, fail="/stockstreamer/finnhub-api-key")
    assert failed.returncode != 0 and "ParameterNotFound" in failed.stderr
    assert (secrets / "finnhub-api-key").read_text() == "kept"


def test_the_market_settings_reach_env_and_defaults_stay_the_fetchers(tmp_path: Path) -> None:
    chain = env_writer(tmp_path).splitlines()
    assert "STOCKSTREAMER_PROVIDER=alpaca,finnhub" in chain
    assert "STOCKSTREAMER_HISTORY_PROVIDER=alpaca" in chain
    assert "STOCKSTREAMER_CALENDAR=XNYS" in chain
    assert "STOCKSTREAMER_EXTENDED_HOURS=true" in chain
    simulated = env_writer(tmp_path, **WITHOUT_RDS).splitlines()
    assert "STOCKSTREAMER_PROVIDER=simulated" in simulated
    assert "STOCKSTREAMER_EXTENDED_HOURS=false" in simulated
    assert not [line for line in simulated if "HISTORY_PROVIDER" in line or "CALENDAR" in line]


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


GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), **GIT_ENV}
    result = subprocess.run(  # noqa: S603
        [shutil.which("git") or "git", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip()


@pytest.fixture
def upstream(tmp_path: Path) -> tuple[Path, list[str]]:
    """A repository with two commits, the older one tagged v1.0.0."""
    repo = tmp_path / "upstream"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    commits = []
    for n in (1, 2):
        (repo / "README").write_text(f"release {n}\n")
        git("add", "README", cwd=repo)
        git("commit", "-q", "-m", f"release {n}", cwd=repo)
        commits.append(git("rev-parse", "HEAD", cwd=repo))
    git("tag", "v1.0.0", commits[0], cwd=repo)
    return repo, commits


def instance_script(tmp_path: Path, name: str, commit: str, url: str) -> tuple[Path, Path]:
    """A boot script as rendered, with the instance's paths moved under tmp_path."""
    script = files(yaml.safe_load(render(tmp_path)))[f"/usr/local/sbin/{name}"]
    deploy_env = tmp_path / "deploy.env"
    deploy_env.write_text(f"REPOSITORY_URL={url}\nREPOSITORY_COMMIT={commit}\n")
    checkout = tmp_path / "opt" / "stockstreamer"
    script = script.replace("/etc/stockstreamer/deploy.env", str(deploy_env))
    script = script.replace("/opt/stockstreamer", str(checkout))
    script = script.replace("systemctl reload stockstreamer", "echo reloaded")
    path = tmp_path / name
    path.write_text(script)
    return path, checkout


def run_script(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(path.parent), **GIT_ENV}
    return subprocess.run(  # noqa: S603
        [shutil.which("bash") or "bash", str(path), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_checkout_fetches_exactly_the_commit_and_verifies_it(
    tmp_path: Path, upstream: tuple[Path, list[str]]
) -> None:
    repo, (first, latest) = upstream
    script, checkout = instance_script(tmp_path, "stockstreamer-checkout", first, repo.as_uri())
    result = run_script(script)
    assert result.returncode == 0, result.stderr
    assert git("rev-parse", "HEAD", cwd=checkout) == first, "the older commit, not the tip"
    assert (checkout / "README").read_text() == "release 1\n"
    assert git("rev-parse", "--is-shallow-repository", cwd=checkout) == "true"
    # Every start runs it again: with HEAD already there, nothing is fetched.
    (tmp_path / "deploy.env").write_text(
        f"REPOSITORY_URL={(tmp_path / 'gone').as_uri()}\nREPOSITORY_COMMIT={first}\n"
    )
    assert run_script(script).returncode == 0
    # Edited code on the server is not the commit it claims to be.
    (checkout / "README").write_text("edited\n")
    refused = run_script(script)
    assert refused.returncode == 1 and "local changes" in refused.stderr
    assert latest != first


@pytest.mark.parametrize("ref", ["v1.0.0", "main", "short"])
def test_checkout_refuses_anything_but_a_full_commit(
    tmp_path: Path, upstream: tuple[Path, list[str]], ref: str
) -> None:
    repo, (first, _) = upstream
    commit = first[:12] if ref == "short" else ref
    script, checkout = instance_script(tmp_path, "stockstreamer-checkout", commit, repo.as_uri())
    result = run_script(script)
    assert result.returncode == 1
    assert "full 40-hex commit SHA" in result.stderr
    assert not checkout.exists(), "refused before anything is fetched"


def test_checkout_of_an_unknown_commit_fails(
    tmp_path: Path, upstream: tuple[Path, list[str]]
) -> None:
    repo, _ = upstream
    script, checkout = instance_script(tmp_path, "stockstreamer-checkout", "f" * 40, repo.as_uri())
    result = run_script(script)
    assert result.returncode != 0
    assert "fatal" in result.stderr, "git's own refusal"
    assert not (checkout / "README").exists(), "nothing checked out"


def test_update_moves_the_deployment_to_a_full_commit_only(
    tmp_path: Path, upstream: tuple[Path, list[str]]
) -> None:
    repo, (first, latest) = upstream
    script, _ = instance_script(tmp_path, "stockstreamer-update", first, repo.as_uri())
    for bad in ("v1.0.0", latest[:12], ""):
        result = run_script(script, bad)
        assert result.returncode == 2 and "40-hex" in result.stderr, bad
        assert f"REPOSITORY_COMMIT={first}\n" in (tmp_path / "deploy.env").read_text()
    result = run_script(script, latest)
    assert result.returncode == 0, result.stderr
    assert "reloaded" in result.stdout, "the reload checks the new commit out"
    assert f"REPOSITORY_COMMIT={latest}\n" in (tmp_path / "deploy.env").read_text()


def test_edge_firewall_is_loaded_at_boot_before_docker(tmp_path: Path) -> None:
    """The limits (test_edge_firewall.py loads them into a kernel) are in place before any port."""
    config = yaml.safe_load(render(tmp_path, edge_rate=7, edge_burst=21, edge_connections=33))
    written = files(config)
    ruleset = written["/etc/stockstreamer/edge-firewall.nft"]
    assert "limit rate over 7/second burst 21 packets" in ruleset
    assert "ct count over 33" in ruleset
    assert "flush ruleset" not in ruleset, "Docker's own rules stay"
    unit = written["/etc/systemd/system/stockstreamer-edge-firewall.service"].splitlines()
    assert "ExecStart=/usr/sbin/nft -f /etc/stockstreamer/edge-firewall.nft" in unit
    assert "Before=network-pre.target docker.service" in unit
    assert "WantedBy=sysinit.target" in unit
    assert "nftables" in config["packages"]
    stack = written["/etc/systemd/system/stockstreamer.service"].splitlines()
    assert "Wants=stockstreamer-edge-firewall.service" in stack


def unit_commands(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}=")]


def test_singleton_runs_what_must_run_once(tmp_path: Path) -> None:
    """api_instances > 1: the fetcher, the alerts service and the one-shots they start after, no
    proxy, no web port."""
    written = files(yaml.safe_load(render(tmp_path, **SINGLETON)))
    unit = written["/etc/systemd/system/stockstreamer.service"]
    up = "/usr/bin/docker compose up -d --build --remove-orphans --wait fetcher alerts"
    assert unit_commands(unit, "ExecStart") == [up]
    assert up in unit_commands(unit, "ExecReload")
    tokens = written["/usr/local/sbin/stockstreamer-db-tokens"]
    assert "for service in fetcher alerts; do" in tokens
    # Its data volume, its vendors' keys and the master secret (for the migrations) as before.
    assert "RequiresMountsFor=/var/lib/stockstreamer" in unit.splitlines()
    assert "aws secretsmanager get-secret-value" in written["/usr/local/sbin/stockstreamer-env"]
    assert "COMPOSE_PROFILES=" in env_writer(tmp_path, **SINGLETON).splitlines()


def test_web_instance_runs_the_api_and_the_dashboard_alone(tmp_path: Path) -> None:
    config = yaml.safe_load(render(tmp_path, **WEB))
    written = files(config)
    unit = written["/etc/systemd/system/stockstreamer.service"]
    up = "/usr/bin/docker compose up -d --build --remove-orphans --wait api dashboard"
    assert unit_commands(unit, "ExecStart") == [up]
    assert up in unit_commands(unit, "ExecReload")
    # No data volume: nothing waits for one, formats or mounts it.
    assert "fs_setup" not in config and "mounts" not in config
    assert len(config["bootcmd"]) == 1 and "public-ipv4" in config["bootcmd"][0][2]
    assert not [line for line in unit.splitlines() if "RequiresMountsFor" in line]
    # No per-address limits: every connection comes from the load balancer's few addresses.
    assert not [p for p in written if "edge-firewall" in p]
    assert "edge-firewall" not in unit and "edge-firewall" not in json.dumps(config["runcmd"])
    # The API's token alone, renewed by the timer; the compose files exist in the repository.
    assert "for service in api; do" in written["/usr/local/sbin/stockstreamer-db-tokens"]
    assert "OnUnitActiveSec=5min" in written["/etc/systemd/system/stockstreamer-db-tokens.timer"]
    script = written["/usr/local/sbin/stockstreamer-env"]
    for name in re.findall(r"deploy/[\w.-]+\.yaml", script):
        assert (ROOT / name).is_file(), name
    assert "deploy/compose.web.yaml" in script and "deploy/compose.server.yaml" not in script
    env = env_writer(tmp_path, **WEB).splitlines()
    assert "STOCKSTREAMER_LOAD_BALANCER_NETWORKS=172.31.0.0/20,172.31.16.0/20" in env
    assert "COMPOSE_PROFILES=" in env


def test_web_instance_start_reads_no_secret(tmp_path: Path) -> None:
    """The API instance's whole start script, run with stand-ins for curl, the AWS CLI and the
    token renewer: .env for the web override, the RDS CA fetched once, and no AWS call but the
    API's write tokens (no vendor key, no master secret)."""
    written = files(yaml.safe_load(render(tmp_path, **WEB)))
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("deploy.env", "settings.env", "vendor-keys"):
        (etc / name).write_text(written[f"/etc/stockstreamer/{name}"])
    data, repo, bin_dir = tmp_path / "data", tmp_path / "repo", tmp_path / "bin"
    for directory in (repo, bin_dir):
        directory.mkdir()
    calls = tmp_path / "calls"
    stubs = {
        "aws": f'echo "aws $*" >>{calls}\necho token-from-ssm\n',
        "curl": f'echo "curl $*" >>{calls}\n'
        'while [ $# -gt 0 ]; do [ "$1" = -o ] && echo CA >"$2"; shift; done\n',
        "db-tokens": f"echo tokens >>{calls}\n",
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}")
        (bin_dir / name).chmod(0o755)
    script = written["/usr/local/sbin/stockstreamer-env"]
    if os.geteuid() != 0:
        script = script.replace('chown "$2" "$secrets/$1"; ', "")  # the instance runs it as root
    for path, here in (
        ("/etc/stockstreamer", str(etc)),
        ("/var/lib/stockstreamer", str(data)),
        ("/opt/stockstreamer", str(repo)),
        ("/usr/local/sbin/stockstreamer-db-tokens", str(bin_dir / "db-tokens")),
    ):
        script = script.replace(path, here)
    (tmp_path / "env.sh").write_text(script)

    def start() -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603
            [shutil.which("bash") or "bash", str(tmp_path / "env.sh")],
            env={"PATH": f"{bin_dir}:{os.environ['PATH']}"},
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )

    result = start()
    assert result.returncode == 0, result.stderr
    env = (repo / ".env").read_text().splitlines()
    assert "COMPOSE_FILE=docker-compose.yml:deploy/compose.rds.yaml:deploy/compose.web.yaml" in env
    assert "STOCKSTREAMER_RDS_ADDRESS=db.example.internal" in env
    assert f"STOCKSTREAMER_RDS_CA_FILE={data}/rds-ca.pem" in env
    assert f"STOCKSTREAMER_SECRETS_DIR={data}/secrets" in env
    assert "STOCKSTREAMER_LOAD_BALANCER_NETWORKS=172.31.0.0/20,172.31.16.0/20" in env
    assert (data / "rds-ca.pem").read_text() == "CA\n"
    assert (data / "secrets").stat().st_mode & 0o777 == 0o700
    lines = calls.read_text().splitlines()
    read_tokens = (
        "aws ssm get-parameter --region eu-west-1 --name /stockstreamer/api-token"
        " --with-decryption --query Parameter.Value --output text"
    )
    assert lines[0] == read_tokens, "the API's write tokens, read"
    assert lines[1].startswith("curl ") and "truststore.pki.rds.amazonaws.com" in lines[1]
    assert lines[2:] == ["tokens"], "no other AWS call: no key, no secret"
    assert (data / "secrets" / "api-token").read_text() == "token-from-ssm"
    # Every later start keeps the CA it has, reads the tokens and renews the login again.
    assert start().returncode == 0
    assert calls.read_text().splitlines()[3:] == [read_tokens, "tokens"]


# SSM as the token block sees it: a parameter in a file; put-parameter refuses to overwrite.
FAKE_SSM = """#!/bin/bash
state=$FAKE_SSM_STATE
case "$2" in
  get-parameter)
    [ -e "$state/fail" ] && { echo "AccessDeniedException" >&2; exit 254; }
    [ -e "$state/parameter" ] || { echo "An error occurred (ParameterNotFound)" >&2; exit 254; }
    cat "$state/parameter"; echo ;;
  put-parameter)
    [ -e "$state/parameter" ] && { echo "ParameterAlreadyExists" >&2; exit 254; }
    while [ $# -gt 0 ]; do [ "$1" = --cli-input-json ] && input=${2#file://}; shift; done
    jq -e '.Type == "SecureString"' "$input" >/dev/null || exit 3
    jq -j .Value "$input" >"$state/parameter" ;;
esac
"""


def token_block(tmp_path: Path, **overrides: Any) -> tuple[Path, Path, Path]:
    """The start script's API-token block alone, with a stand-in for SSM; returns the script,
    the secrets directory and SSM's state."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    written = files(yaml.safe_load(render(tmp_path, **overrides)))
    script = written["/usr/local/sbin/stockstreamer-env"]
    block = re.search(
        r"^# The API's write tokens.+?^rm -f \"\$secrets/\.ssm-error\"$", script, re.M | re.S
    )
    assert block, script
    secrets, state, bin_dir = tmp_path / "secrets", tmp_path / "ssm", tmp_path / "bin"
    for directory in (secrets, state, bin_dir):
        directory.mkdir()
    (bin_dir / "aws").write_text(FAKE_SSM)
    (bin_dir / "aws").chmod(0o755)
    program = tmp_path / "tokens.sh"
    program.write_text(
        "\n".join(
            [
                "set -euo pipefail",
                f"AWS_REGION=eu-west-1 secrets={secrets}",
                "API_TOKEN_PARAMETER=/stockstreamer/api-token",
                'put() { cat >"$secrets/$1"; chmod 0400 "$secrets/$1"; }',
                block[0],
            ]
        )
    )
    return program, secrets, state


def run_token_block(program: Path, state: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = program.parent / "bin"
    return subprocess.run(  # noqa: S603
        [shutil.which("bash") or "bash", str(program)],
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SSM_STATE": str(state)},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def test_the_first_start_makes_the_api_token_and_later_ones_read_it(tmp_path: Path) -> None:
    """No parameter yet: a new token (never on a command line) becomes the parameter and the
    secret file; from then on the parameter wins, tokens put there by hand included."""
    program, secrets, state = token_block(tmp_path / "all")
    first = run_token_block(program, state)
    assert first.returncode == 0, first.stderr
    token = (secrets / "api-token").read_text()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert (state / "parameter").read_text() == token
    assert sorted(p.name for p in secrets.iterdir()) == ["api-token"], "nothing left behind"
    (state / "parameter").write_text(f"{token}\nrotated-token-0123456789")
    again = run_token_block(program, state)
    assert again.returncode == 0, again.stderr
    assert (secrets / "api-token").read_text() == f"{token}\nrotated-token-0123456789"
    # deploy/make-secrets' token (the container database's instance) is the one uploaded
    (state / "parameter").unlink()
    (secrets / "api-token").chmod(0o600)
    (secrets / "api-token").write_text("kept-token-from-make-secrets")
    assert run_token_block(program, state).returncode == 0
    assert (state / "parameter").read_text() == "kept-token-from-make-secrets"


def test_an_api_instance_only_reads_the_api_token(tmp_path: Path) -> None:
    """Before the singleton made the parameter the start fails (and is retried); any other
    failure to read it fails the start too, and the token kept from before stays."""
    program, secrets, state = token_block(tmp_path / "web", **WEB)
    missing_yet = run_token_block(program, state)
    assert missing_yet.returncode != 0 and "ParameterNotFound" in missing_yet.stderr
    assert not (state / "parameter").exists(), "an API instance never makes it"
    (state / "parameter").write_text("shared-token-0123456789")
    assert run_token_block(program, state).returncode == 0
    assert (secrets / "api-token").read_text() == "shared-token-0123456789"
    (state / "fail").touch()
    main, main_secrets, main_state = token_block(tmp_path / "all")
    (main_state / "fail").touch()
    (main_secrets / "api-token").write_text("kept")
    failed = run_token_block(main, main_state)
    assert failed.returncode != 0 and "AccessDenied" in failed.stderr
    assert (main_secrets / "api-token").read_text() == "kept"
    assert not (main_state / "parameter").exists()
