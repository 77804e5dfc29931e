"""Static checks of terraform/: exposure, IMDSv2, encryption, secrets kept out of user_data."""

from __future__ import annotations

import inspect
import ipaddress
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from services.common.market import calendar_names
from services.fetcher import config as fetcher_config
from services.secrets import CONSUMERS, VENDOR_KEYS
from tests.deploy.compose import WEB_OVERRIDE, load_yaml
from tests.deploy.hcl import Terraform, load_terraform, one
from tests.utils.tools import missing

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = ROOT / "terraform"
SENSITIVE_PORTS = (22, 5432)
CADDYFILE = ROOT / "deploy" / "Caddyfile"


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


def _port_ranges(rule: dict[str, Any], tf: Terraform) -> list[tuple[int, int]]:
    """A rule's ports: literal, or each value of the local map its for_each runs over."""
    if rule["from_port"] == rule["to_port"] == "${each.value}":
        maps = [tf.locals[n] for n in re.findall(r"local\.(\w+)", rule["for_each"])]
        ports = [p for m in maps if isinstance(m, dict) for p in m.values()]
        assert ports and all(isinstance(p, int) for p in ports), rule["for_each"]
        return [(p, p) for p in ports]
    return [(rule["from_port"], rule["to_port"])]


def test_no_world_ingress_to_ssh_or_postgres(tf: Terraform) -> None:
    rules = tf.resource("aws_vpc_security_group_ingress_rule")
    assert rules, "ingress must be one aws_vpc_security_group_ingress_rule per rule"
    for name, rule in rules.items():
        exposed = [
            p
            for low, high in _port_ranges(rule, tf)
            for p in SENSITIVE_PORTS
            if low <= p <= high or rule["ip_protocol"] == "-1"
        ]
        assert not (exposed and _world_open(rule, tf)), f"{name} opens {exposed} to 0.0.0.0/0"
    for name, group in tf.resource("aws_security_group").items():
        assert "ingress" not in group, f"{name}: inline ingress bypasses the per-rule resources"


def test_https_is_opened_only_with_a_domain(tf: Terraform) -> None:
    """The instance's own web ports: 443 only with a domain, and none when the load balancer
    serves the site (api_instances > 1)."""
    rules = tf.resource("aws_vpc_security_group_ingress_rule")
    for name, protocol in (("https", "tcp"), ("http3", "udp")):
        rule = rules[name]
        assert (rule["from_port"], rule["to_port"], rule["ip_protocol"]) == (443, 443, protocol)
        assert rule["for_each"] == "${local.https_cidrs}", name
    assert tf.locals["https_cidrs"] == (
        '${var.domain_name != "" && !local.scale_out ? toset(var.allowed_cidrs) : toset([])}'
    )
    assert rules["http"]["for_each"] == "${local.http_cidrs}"
    assert tf.locals["http_cidrs"] == "${local.scale_out ? toset([]) : toset(var.allowed_cidrs)}"
    assert tf.locals["scale_out"] == "${var.api_instances > 1}"
    assert tf.variables["api_instances"]["default"] == 1, "one instance unless asked"
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
    assert not [
        a for a in attachments.values() if re.search(r"aws_iam_role\.(instance|web)", a["role"])
    ]
    # The instance's, and the API instances' of the scale-out mode.
    assert set(tf.resource("aws_iam_role_policy")) == {"instance", "web"}
    # The details (actions, resources) are asserted on a plan by terraform/tests.


def test_user_data_carries_no_secret(tf: Terraform) -> None:
    assert tf.resource("aws_instance")["this"]["user_data_base64"] == (
        "${base64gzip(local.user_data)}"
    )
    assert tf.resource("aws_launch_template")["web"]["user_data"] == (
        "${base64gzip(local.web_user_data)}"
    )
    template = '${templatefile("${path.module}/templates/cloud-init.yaml.tftpl", merge('
    for name in ("user_data", "web_user_data"):
        assert tf.locals[name].startswith(template + "local.cloud_init, {"), name
    # Only names and ARNs go in: no password, secret value, SSM value or key-holding variable.
    forbidden = r"password|secret_string|random_|\.value\b|var\.\w*(key|token|secret)\b"
    sensitive = [n for n, v in tf.variables.items() if v.get("sensitive")]
    for name in ("cloud_init", "user_data", "web_user_data"):
        user_data = str(tf.locals[name])
        assert not re.search(forbidden, user_data, re.IGNORECASE), user_data
        assert not [n for n in sensitive if f"var.{n}" in user_data]
    # The API instances are handed no vendor key parameter and no master secret.
    assert "vendor_key_parameters = {}" in tf.locals["web_user_data"]
    assert 'rds_secret_arn = ""' in tf.locals["web_user_data"]
    template = (TERRAFORM_DIR / "templates" / "cloud-init.yaml.tftpl").read_text()
    # Secrets are fetched on the instance, by name, when the unit starts.
    assert "aws ssm get-parameter" in template and "--with-decryption" in template
    assert "aws secretsmanager get-secret-value" in template


def test_vendors_and_their_keys_match_the_secrets_and_the_fetcher(tf: Terraform) -> None:
    """The provider names Terraform accepts are the fetcher's; each vendor's key files are the
    ones the secrets layout hands the fetcher, each read from a parameter variable of its own."""
    condition = one(tf.variables["market_data_provider"]["validation"])["condition"]
    names = set(re.findall(r'"(\w+)"', condition))
    assert names == {"simulated", *VENDOR_KEYS}
    history = one(tf.variables["history_provider"]["validation"])["condition"]
    assert set(re.findall(r'"(\w*)"', history)) == names - {"finnhub"} | {""}, "no Finnhub"
    config = inspect.getsource(fetcher_config)
    assert not [n for n in names if f'"{n}"' not in config], "a name the fetcher does not know"
    files = tf.locals["vendor_key_files"]
    assert {vendor: tuple(keys) for vendor, keys in files.items()} == VENDOR_KEYS
    fetcher = next(c for c in CONSUMERS if c.name == "fetcher").files
    for key in (k for keys in VENDOR_KEYS.values() for k in keys):
        assert f"{key.replace('-', '_')}_parameter" in tf.variables, key
        # In the fetcher's /run/secrets under its setting's name, whose *_FILE the fetcher reads.
        setting = key.replace("-", "_")
        assert fetcher.get(setting) == key
        assert f'"{setting.upper()}_FILE"' in config, f"the fetcher does not read {key}"
    assert "vendor_key_parameters = local.secret_parameters" in tf.locals["user_data"]
    # beside the keys, the alerts service's channels file, as the secrets layout names it
    alerts = next(c for c in CONSUMERS if c.name == "alerts").files
    channels = f'"{alerts["alert_channels"]}" = var.alert_channels_parameter'
    assert channels in tf.locals["secret_parameters"]


def test_every_calendar_name_passes_the_calendar_variable(tf: Terraform) -> None:
    condition = one(tf.variables["calendar"]["validation"])["condition"]
    match = re.search(r'regex\("(.+)", var\.calendar\)', condition)
    assert match, condition
    pattern = re.compile(match[1])
    assert pattern.fullmatch(""), "empty: the fetcher's default"
    assert not [n for n in calendar_names() if not pattern.fullmatch(n)]
    assert not pattern.fullmatch("XNYS\nSTOCKSTREAMER_X=1") and not pattern.fullmatch("$(id)")


def test_every_variable_and_output_is_documented(tf: Terraform) -> None:
    for name, variable in tf.variables.items():
        assert variable.get("type"), f"variable {name} has no type"
        assert variable.get("description"), f"variable {name} has no description"
    for name, output in tf.outputs.items():
        assert output.get("description"), f"output {name} has no description"
    assert {"public_ip", "dashboard_url", "api_url", "ssm_shell_command"} <= set(tf.outputs)
    aws = one(one(tf.terraform)["required_providers"])["aws"]
    assert re.fullmatch(r"~> \d+\.\d+", aws["version"]), "pin the AWS provider"


def test_scale_out_matches_the_api_instances_compose_and_caddys_site(tf: Terraform) -> None:
    """The load balancer reaches the ports deploy/compose.web.yaml publishes, routes the paths
    Caddy routes, and sends the dashboard's Content-Security-Policy as Caddy does."""
    web = load_yaml(WEB_OVERRIDE)["services"]
    published = {name: {int(p.split(":")[0]) for p in web[name]["ports"]} for name in web}
    ports = tf.locals["web_ports"]
    assert published == {name: {port} for name, port in ports.items()}
    groups = tf.resource("aws_lb_target_group")
    assert groups["api"]["port"] == "${local.web_ports.api}"
    assert groups["dashboard"]["port"] == "${local.web_ports.dashboard}"
    assert one(groups["api"]["health_check"])["path"] == "/readyz"
    assert one(groups["dashboard"]["health_check"])["path"] == "/healthz"
    caddyfile = CADDYFILE.read_text()
    policies = re.findall(r'Content-Security-Policy "([^"]+)"', caddyfile)
    assert tf.locals["dashboard_csp"] == policies[-1], "the dashboard's, the site's last handle"
    rules = tf.resource("aws_lb_listener_rule")

    def paths(rule: str) -> set[str]:
        return set(one(one(rules[rule]["condition"])["path_pattern"])["values"])

    api = re.search(r"@api path (.+)", caddyfile)
    private = re.search(r"@private path (.+)", caddyfile)
    assert api and private
    assert paths("api") == set(api[1].split())
    # Caddy names /docs and /docs/*; the load balancer's patterns cover both with /docs*.
    assert {p.rstrip("*") for p in paths("private")} == {
        p.removesuffix("/*") for p in private[1].split()
    }


def test_scale_out_instances_are_hardened_and_reached_by_the_load_balancer_alone(
    tf: Terraform,
) -> None:
    template = tf.resource("aws_launch_template")["web"]
    assert one(template["metadata_options"])["http_tokens"] == "required"
    assert one(template["metadata_options"])["http_put_response_hop_limit"] == 1
    assert one(one(template["block_device_mappings"])["ebs"])["encrypted"] is True
    assert template["image_id"].startswith("${data.aws_ssm_parameter."), "AMI must be looked up"
    assert one(template["iam_instance_profile"])["name"] == (
        "${aws_iam_instance_profile.web[0].name}"
    )
    rules = tf.resource("aws_vpc_security_group_ingress_rule")
    to_web = {
        n: r
        for n, r in rules.items()
        if r["security_group_id"].startswith("${aws_security_group.web[")
    }
    # The load balancer's security group, nothing by address (SSH from ssh_cidrs aside).
    assert {n for n, r in to_web.items() if "cidr_ipv4" in r} == {"web_ssh"}
    assert to_web["web_ssh"]["for_each"] == (
        "${local.scale_out ? toset(var.ssh_cidrs) : toset([])}"
    )
    assert to_web["web_from_alb"]["referenced_security_group_id"] == (
        "${aws_security_group.alb[0].id}"
    )
    to_rds = {n: r for n, r in rules.items() if "aws_security_group.rds" in r["security_group_id"]}
    assert {r["referenced_security_group_id"] for r in to_rds.values()} == {
        "${aws_security_group.instance.id}",
        "${aws_security_group.web[0].id}",
    }
    assert not [r for r in to_rds.values() if "cidr_ipv4" in r]
    lb = tf.resource("aws_lb")["web"]
    assert lb["drop_invalid_header_fields"] is True
    assert lb["internal"] is False
    assert lb["enable_deletion_protection"] == "${var.alb_deletion_protection}"
    assert tf.variables["alb_deletion_protection"]["default"] is True
    https = tf.resource("aws_lb_listener")["https"]
    assert https["ssl_policy"].startswith("ELBSecurityPolicy-TLS13-1-2-")
    assert one(tf.resource("aws_lb_target_group")["dashboard"]["stickiness"])["enabled"] is True


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
    """terraform/tests: plans and applies with and without RDS, and with api_instances > 1 (a
    load balancer and API instances), no network, no credentials."""
    result = _run_terraform(terraform_env, "test", "-no-color", timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    summary = re.search(r"Success! (\d+) passed, 0 failed", result.stdout)
    assert summary and int(summary[1]) >= 4, result.stdout[-2000:]
