"""Static checks of terraform/: exposure, IMDSv2, encryption, secrets kept out of user_data."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from services.fetcher.config import FetcherSettings
from tests.deploy.hcl import Terraform, load_terraform, one

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = ROOT / "terraform"
SENSITIVE_PORTS = (22, 5432)


@pytest.fixture(scope="module")
def tf() -> Terraform:
    return load_terraform(TERRAFORM_DIR)


def _world_open(rule: dict[str, Any], tf: Terraform) -> bool:
    """Whether a rule admits 0.0.0.0/0, literally or through its variable's default."""
    cidr = rule.get("cidr_ipv4")
    if cidr == "${each.value}":
        match = re.fullmatch(r"\$\{toset\(var\.(\w+)\)\}", rule["for_each"])
        assert match, f"unexpected for_each {rule['for_each']}"
        cidrs = tf.variables[match[1]].get("default", [])
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
    assert (
        "AmazonSSMManagedInstanceCore"
        in tf.resource("aws_iam_role_policy_attachment")["ssm"]["policy_arn"]
    )
    assert tf.resource("aws_eip")["this"]["domain"] == "vpc"


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
    assert allowed == set(FetcherSettings.model_fields["provider"].annotation.__args__)  # type: ignore[union-attr]
    user_data = tf.resource("aws_instance")["this"]["user_data"]
    assert 'provider_key_env = "${upper(var.market_data_provider)}_API_KEY"' in user_data
    from services.common.config import env_names

    names = env_names(FetcherSettings)
    assert {f"{p.upper()}_API_KEY" for p in allowed - {"simulated"}} <= set(names)


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
