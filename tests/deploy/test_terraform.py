"""Static checks of terraform/: exposure, IMDSv2, encryption, secrets kept out of user_data."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from services.fetcher.config import PROVIDER_NAMES
from services.secrets import CONSUMERS
from tests.deploy.hcl import Terraform, load_terraform, one
from tests.utils.tools import missing

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = ROOT / "terraform"
SENSITIVE_PORTS = (22, 5432)


@pytest.fixture(scope="module")
def tf() -> Terraform:
    return load_terraform(TERRAFORM_DIR)


def _world_open(rule: dict[str, Any], tf: Terraform) -> bool:
    """Whether a rule admits 0.0.0.0/0, literally or through its variables' defaults."""
    cidr = rule.get("cidr_ipv4")
    if cidr == "${each.value}":
        expression = rule["for_each"]
        local = re.fullmatch(r"\$\{local\.(\w+)\}", expression)
        if local:
            expression = tf.locals[local[1]]
        names = re.findall(r"toset\(var\.(\w+)\)", expression)
        assert names, f"unexpected for_each {rule['for_each']}"
        cidrs = [c for name in names for c in tf.variables[name].get("default", [])]
    else:
        cidrs = [cidr] if cidr else []
    return any(ipaddress.ip_network(c).prefixlen == 0 for c in cidrs)


def test_no_world_ingress_to_ssh_or_postgres(tf: Terraform) -> None:
    rules = tf.resource("aws_vpc_security_group_ingress_rule")
    assert rules, "ingress must be one aws_vpc_security_group_ingress_rule per rule"
    for name, rule in rules.items():
        low, high = rule["from_port"], rule["to_port"]
        exposed = [p for p in SENSITIVE_PORTS if low <= p <= high or rule["ip_protocol"] == "-1"]
        assert not (exposed and _world_open(rule, tf)), f"{name} opens {exposed} to 0.0.0.0/0"
    for name, group in tf.resource("aws_security_group").items():
        assert "ingress" not in group, f"{name}: inline ingress bypasses the per-rule resources"


def test_https_is_opened_only_with_a_domain(tf: Terraform) -> None:
    rules = tf.resource("aws_vpc_security_group_ingress_rule")
    for name, protocol in (("https", "tcp"), ("http3", "udp")):
        rule = rules[name]
        assert (rule["from_port"], rule["to_port"], rule["ip_protocol"]) == (443, 443, protocol)
        assert rule["for_each"] == "${local.https_cidrs}", name
    assert tf.locals["https_cidrs"] == (
        '${var.domain_name != "" ? toset(var.allowed_cidrs) : toset([])}'
    )
    assert rules["http"]["for_each"] == "${toset(var.allowed_cidrs)}"
    assert tf.variables["allow_plain_http"]["default"] is False


def test_ssh_is_closed_by_default_and_never_world_open(tf: Terraform) -> None:
    ssh = tf.resource("aws_vpc_security_group_ingress_rule")["ssh"]
    assert (ssh["from_port"], ssh["to_port"]) == (22, 22)
    assert ssh["for_each"] == "${toset(var.ssh_cidrs)}"
    assert tf.variables["ssh_cidrs"]["default"] == []
    assert '"0.0.0.0/0"' in one(tf.variables["ssh_cidrs"]["validation"])["condition"]


def test_database_only_reachable_from_the_instance(tf: Terraform) -> None:
    rule = tf.resource("aws_vpc_security_group_ingress_rule")["rds_from_instance"]
    assert rule["referenced_security_group_id"] == "${aws_security_group.instance.id}"
    assert "cidr_ipv4" not in rule
    db = tf.resource("aws_db_instance")["this"]
    assert db["publicly_accessible"] is False
    assert db["storage_encrypted"] is True
    assert db["manage_master_user_password"] is True
    assert "password" not in db, "RDS manages the master password"
    assert db["backup_retention_period"] == "${var.rds_backup_retention_days}"
    assert tf.variables["rds_backup_retention_days"]["default"] >= 1
    assert tf.variables["use_rds"]["default"] is False


def test_instance_requires_imdsv2_and_encrypts_its_root_volume(tf: Terraform) -> None:
    instance = tf.resource("aws_instance")["this"]
    assert one(instance["metadata_options"])["http_tokens"] == "required"
    assert one(instance["root_block_device"])["encrypted"] is True
    assert instance["iam_instance_profile"] == "${aws_iam_instance_profile.instance.name}"
    assert instance["ami"].startswith("${data.aws_ssm_parameter."), "AMI must be looked up"
    assert tf.resource("aws_eip")["this"]["domain"] == "vpc"
    assert tf.resource("aws_ebs_volume")["data"]["encrypted"] is True


def test_instance_policy_is_its_own_and_minimal(tf: Terraform) -> None:
    """No AWS-managed policy on the instance (the SSM core policy reads every parameter)."""
    text = "".join(p.read_text() for p in TERRAFORM_DIR.glob("*.tf"))
    assert "AmazonSSMManagedInstanceCore" not in text
    attachments = tf.resource("aws_iam_role_policy_attachment")
    assert all("aws_iam_role.instance" not in a["role"] for a in attachments.values())
    assert set(tf.resource("aws_iam_role_policy")) == {"instance"}
    # The details (actions, resources) are asserted on a plan by terraform/tests.


def test_user_data_carries_no_secret(tf: Terraform) -> None:
    user_data = tf.resource("aws_instance")["this"]["user_data"]
    assert user_data.startswith('${templatefile("${path.module}/templates/')
    # Only names and ARNs go in: no password, secret value, SSM value or key-holding variable.
    forbidden = r"password|secret_string|random_|\.value\b|var\.\w*(key|token|secret)\b"
    assert not re.search(forbidden, user_data, re.IGNORECASE), user_data
    sensitive = [n for n, v in tf.variables.items() if v.get("sensitive")]
    assert not [n for n in sensitive if f"var.{n}" in user_data]
    template = (TERRAFORM_DIR / "templates" / "cloud-init.yaml.tftpl").read_text()
    # Secrets are fetched on the instance, by name, when the unit starts.
    assert "aws ssm get-parameter" in template and "--with-decryption" in template
    assert "aws secretsmanager get-secret-value" in template


def test_provider_key_names_match_the_fetcher_settings(tf: Terraform) -> None:
    condition = one(tf.variables["market_data_provider"]["validation"])["condition"]
    allowed = set(re.findall(r'"(\w+)"', condition))
    # Terraform offers one provider with one key: not Alpaca (two keys), nor a chain, yet.
    assert allowed == set(PROVIDER_NAMES) - {"alpaca"}
    user_data = tf.resource("aws_instance")["this"]["user_data"]
    assert 'provider_key_file = "${var.market_data_provider}-api-key"' in user_data
    # The file the instance writes is the one the secrets one-shot hands the fetcher.
    fetcher = next(c for c in CONSUMERS if c.name == "fetcher").files
    for vendor in allowed - {"simulated"}:
        assert fetcher.get(f"{vendor}_api_key") == f"{vendor}-api-key"


def test_every_variable_and_output_is_documented(tf: Terraform) -> None:
    for name, variable in tf.variables.items():
        assert variable.get("type"), f"variable {name} has no type"
        assert variable.get("description"), f"variable {name} has no description"
    for name, output in tf.outputs.items():
        assert output.get("description"), f"output {name} has no description"
    assert {"public_ip", "dashboard_url", "api_url", "ssm_shell_command"} <= set(tf.outputs)
    aws = one(one(tf.terraform)["required_providers"])["aws"]
    assert re.fullmatch(r"~> \d+\.\d+", aws["version"]), "pin the AWS provider"


def _terraform() -> str:
    found = shutil.which("terraform")
    if found is None:
        pytest.skip("SKIPPED: no terraform binary on PATH, so `terraform fmt` and templatefile")
    return found


def test_terraform_fmt() -> None:
    result = subprocess.run(  # noqa: S603
        [_terraform(), "fmt", "-check", "-recursive", "-diff", str(TERRAFORM_DIR)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_provider_lock_is_committed(tf: Terraform) -> None:
    lock = (TERRAFORM_DIR / ".terraform.lock.hcl").read_text()
    block = re.search(
        r'provider "registry.terraform.io/hashicorp/aws" \{(.+?)\n\}', lock, re.DOTALL
    )
    assert block, "the AWS provider is locked"
    constraint = one(one(tf.terraform)["required_providers"])["aws"]["version"]
    assert f'constraints = "{constraint}"' in block[1]
    # Hashes of every platform's package, not only this machine's.
    assert len(re.findall(r'"zh:[0-9a-f]{64}"', block[1])) >= 10


def _plugin_mirror() -> Path | None:
    """A local provider directory (a `registry.terraform.io` tree holding hashicorp/aws)."""
    home = Path.home()
    candidates = [
        home / ".terraform.d" / "plugins",
        home / ".local" / "share" / "terraform" / "plugins",
        Path("/usr/local/share/terraform/plugins"),
        Path("/usr/share/terraform/plugins"),
    ]
    # Anywhere else near the top of the file system (not the kernel's trees).
    pruned = ["(", "-path", "/proc", "-o", "-path", "/sys", "-o", "-path", "/dev", ")", "-prune"]
    found = subprocess.run(  # noqa: S603
        [
            "find",
            "/",
            "-maxdepth",
            "4",
            *pruned,
            "-o",
            "-type",
            "d",
            "-name",
            "registry.terraform.io",
            "-print",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    ).stdout.split()
    candidates += [Path(p).parent for p in found]
    for candidate in candidates:
        if (candidate / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
            return candidate
    return None


@pytest.fixture(scope="module")
def terraform_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`terraform init -backend=false` from a local provider mirror, against the committed lock."""
    terraform = shutil.which("terraform")
    if terraform is None:
        missing("no terraform binary on PATH")
    mirror = _plugin_mirror()
    if mirror is None:
        missing("no local provider directory (registry.terraform.io/hashicorp/aws) to init from")
    tmp = tmp_path_factory.mktemp("terraform")
    config = tmp / "cli.tfrc"
    config.write_text(
        f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror}"\n  }}\n}}\n'
    )
    env = {
        **os.environ,
        "TF_CLI_CONFIG_FILE": str(config),
        "TF_DATA_DIR": str(tmp / "data"),  # .terraform stays out of the tree
        "TF_IN_AUTOMATION": "1",
        "CHECKPOINT_DISABLE": "1",
    }
    init = ["init", "-backend=false", "-input=false", "-lockfile=readonly", "-no-color"]
    result = _run_terraform(env, *init, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    return env


def _run_terraform(
    env: dict[str, str], *args: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [shutil.which("terraform") or "terraform", f"-chdir={TERRAFORM_DIR}", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def test_terraform_validate(terraform_env: dict[str, str]) -> None:
    result = _run_terraform(terraform_env, "validate", "-json", "-no-color", timeout=120)
    report = json.loads(result.stdout)
    assert report["valid"], report["diagnostics"]
    assert report["warning_count"] == 0, report["diagnostics"]


def test_terraform_test_with_a_mocked_provider(terraform_env: dict[str, str]) -> None:
    """terraform/tests: plans and applies with and without RDS, no network, no credentials."""
    result = _run_terraform(terraform_env, "test", "-no-color", timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    summary = re.search(r"Success! (\d+) passed, 0 failed", result.stdout)
    assert summary and int(summary[1]) >= 4, result.stdout[-2000:]
