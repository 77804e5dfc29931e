"""The observability profile, checked without a running stack: promtool, compose, Grafana files."""

from __future__ import annotations

import json
import re
import subprocess
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.deploy.compose import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    dotenv,
    interpolate_all,
    load_yaml,
    secrets_volume,
)
from tests.deploy.observability import (
    ALERT_TESTS,
    ALERTS,
    DASHBOARD_JSON,
    GRAFANA_DIR,
    OBSERVABILITY,
    PROFILE_COMPOSE,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    RUNBOOK,
    alert_rules,
    dashboard,
    dashboard_exprs,
    github_anchor,
    load,
    metric_names,
    panels,
)
from tests.utils.tools import require_tool

PROFILE = "observability"
# What the issue asks the dashboard to show, as the metric each panel must query.
REQUIRED_PANEL_METRICS = {
    "ticks written per second per symbol": "stockstreamer_fetcher_ticks_written_total",
    "tick age": "stockstreamer_fetcher_newest_tick_timestamp_seconds",
    "commit-to-SSE lag": "stockstreamer_api_commit_to_send_seconds_bucket",
    "receipt-to-push lag": "stockstreamer_dashboard_receipt_to_push_seconds_bucket",
    "open streams": "stockstreamer_api_open_streams",
    "dashboard sessions": "stockstreamer_dashboard_sessions",
    "provider errors by kind": "stockstreamer_fetcher_provider_errors_total",
    "ticks dropped by reason": "stockstreamer_fetcher_ticks_dropped_total",
    "buffer depth": "stockstreamer_fetcher_buffer_depth",
    "history query latency": "stockstreamer_api_history_query_seconds_bucket",
    "database size": "pg_database_size_bytes",
    "disk free": "stockstreamer_fetcher_disk_free_bytes",
    "alerts armed": "stockstreamer_alerts_armed",
    "deliveries by result": "stockstreamer_alerts_deliveries_total",
    "tick-to-delivery latency": "stockstreamer_alerts_tick_to_delivery_seconds_bucket",
}
# What the issue asks to be alerted on, as the alert that covers it.
REQUIRED_ALERTS = {
    "TicksNotWritten",
    "ProviderErrorRatioHigh",
    "OutageBufferHalfFull",
    "ApiErrorRatioHigh",
    "StreamClientsCutForSlowness",
    "DatabaseDown",
    "DiskAlmostFull",
    "HistoryQueriesSlow",
    "AlertDeliveriesAbandoned",
}


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    result = subprocess.run(  # noqa: S603
        [require_tool("promtool", package="prometheus"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def profile() -> dict[str, Any]:
    """The profile's compose file after `cp .env.example .env`."""
    model: dict[str, Any] = interpolate_all(
        load_yaml(PROFILE_COMPOSE), dotenv(ENV_EXAMPLE.read_text())
    )
    return model


# -- Prometheus -----------------------------------------------------------------------------
def test_promtool_checks_config_and_rules() -> None:
    out = promtool("check", "config", PROMETHEUS_CONFIG.name)
    assert "SUCCESS" in out and f"{len(alert_rules())} rules found" in out
    promtool("check", "rules", ALERTS.name)


def test_promtool_rule_unit_tests_pass() -> None:
    assert "SUCCESS" in promtool("test", "rules", ALERT_TESTS.name)


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests fail when a rule's threshold moves: they assert, not just evaluate."""
    (tmp_path / ALERT_TESTS.name).write_text(ALERT_TESTS.read_text())
    (tmp_path / ALERTS.name).write_text(ALERTS.read_text().replace("> 300", "> 3000"))
    result = subprocess.run(  # noqa: S603
        [require_tool("promtool", package="prometheus"), "test", "rules", ALERT_TESTS.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode != 0 and "TicksNotWritten" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load(ALERT_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "every alert has a case where it fires"
    assert names - quiet == set(), "every alert has a case where it stays quiet"


def test_alerts_cover_the_issue_and_link_their_runbook() -> None:
    rules = alert_rules()
    assert REQUIRED_ALERTS <= {rule["alert"] for rule in rules}
    headings = {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("### ")
    }
    for rule in rules:
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/operations.md" and anchor == rule["alert"].lower()
        assert anchor in headings, f"{RUNBOOK.name} has no '### {rule['alert']}' section"


def test_scrape_jobs_reach_every_service_on_its_compose_port(profile: dict[str, Any]) -> None:
    stack = interpolate_all(load_yaml(COMPOSE_FILE), dotenv(ENV_EXAMPLE.read_text()))
    settings = {
        "fetcher": "STOCKSTREAMER_FETCHER_METRICS_PORT",
        "api": "STOCKSTREAMER_API_PORT",
        "alerts": "STOCKSTREAMER_ALERTS_PORT",
        "dashboard": "STOCKSTREAMER_DASHBOARD_PORT",
    }
    ports = {name: stack["services"][name]["environment"][s] for name, s in settings.items()}
    jobs = {job["job_name"]: job for job in load(PROMETHEUS_CONFIG)["scrape_configs"]}
    assert set(jobs) == {*ports, "postgres", "prometheus"}
    for service, port in ports.items():
        (sd,) = jobs[service]["dns_sd_configs"]
        # Every replica's address, from Docker's DNS, on the port the service listens on.
        assert sd == {"names": [service], "type": "A", "port": int(port), "refresh_interval": "15s"}
    (exporter,) = jobs["postgres"]["static_configs"][0]["targets"]
    host, port = exporter.split(":")
    assert host in profile["services"] and port == "9187"
    # Prometheus itself where it listens: only on its alias's address (not localhost).
    (own,) = jobs["prometheus"]["static_configs"][0]["targets"]
    assert f"--web.listen-address={own}" in profile["services"]["prometheus"]["command"]
    assert load(PROMETHEUS_CONFIG)["rule_files"] == [ALERTS.name]


# -- Compose --------------------------------------------------------------------------------
def test_profile_matches_the_compose_spec_and_is_included_once() -> None:
    schema_file = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert [e.message for e in validator.iter_errors(load_yaml(PROFILE_COMPOSE))] == []
    include = load_yaml(COMPOSE_FILE)["include"]
    assert include == [str(PROFILE_COMPOSE.relative_to(COMPOSE_FILE.parent))]


def test_profile_services_start_only_with_the_profile(profile: dict[str, Any]) -> None:
    services = profile["services"]
    assert set(services) == {"prometheus", "postgres-exporter", "grafana"}
    assert all(spec["profiles"] == [PROFILE] for spec in services.values())
    assert not set(services) & set(load_yaml(COMPOSE_FILE)["services"]), "include must not clash"


def test_uis_are_published_on_loopback_only(profile: dict[str, Any]) -> None:
    published = {name: spec.get("ports", []) for name, spec in profile["services"].items()}
    assert published["postgres-exporter"] == []
    for name in ("prometheus", "grafana"):
        (port,) = published[name]
        assert port.startswith("127.0.0.1:"), f"{name} must stay on loopback: {port}"


def test_grafana_password_is_a_secret_file_with_no_default(profile: dict[str, Any]) -> None:
    grafana = profile["services"]["grafana"]
    env = grafana["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    # Its own volume, written by the secrets one-shot before Grafana starts (docker-compose.yml).
    assert secrets_volume(grafana) == "secrets-grafana"
    assert grafana["depends_on"]["secrets"]["condition"] == "service_completed_successfully"
    # An empty or unreadable file stops Grafana before it could start with its default password.
    (script,) = [arg for arg in grafana["entrypoint"] if "test -s" in arg]
    assert "exit 1" in script and script.rstrip().endswith("exec /run.sh")
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    ignored = (OBSERVABILITY / ".gitignore").read_text().split()
    assert "secrets/" in ignored, "the default secret location is never committed"
    tracked = subprocess.run(
        ["git", "-C", str(OBSERVABILITY), "ls-files", "secrets"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert tracked == ""


def test_the_exporter_logs_in_as_a_monitor_with_a_secret_file() -> None:
    exporter = load_yaml(PROFILE_COMPOSE)["services"]["postgres-exporter"]
    raw = exporter["environment"]
    assert raw["DATA_SOURCE_USER"] == "stockstreamer_monitor"  # pg_monitor only (db/users.sql)
    assert raw["DATA_SOURCE_PASS_FILE"] == "/run/secrets/exporter_db_password"
    assert secrets_volume(exporter) == "secrets-postgres-exporter"
    assert "DATA_SOURCE_NAME" not in raw, "a URL with the password in it ends up in logs"
    assert "DATA_SOURCE_PASS" not in raw


def test_mounted_configuration_exists(profile: dict[str, Any]) -> None:
    for name, spec in profile["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (OBSERVABILITY / source).exists(), f"{name} mounts missing {source}"


# -- Grafana: its provisioning, checked as files without running Grafana -------------------
def mount_target(profile: dict[str, Any], source: str) -> str:
    for volume in profile["services"]["grafana"]["volumes"]:
        parts = volume.split(":")
        if parts[0] == source:
            return parts[1]
    raise AssertionError(f"grafana does not mount {source}")


def test_datasource_points_at_the_profile_prometheus(profile: dict[str, Any]) -> None:
    assert mount_target(profile, "./grafana/provisioning") == "/etc/grafana/provisioning"
    (source,) = load(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yaml")[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    (port,) = profile["services"]["prometheus"]["ports"]
    assert source["url"] == f"http://prometheus:{port.rsplit(':', 1)[1]}"
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    assert variable["current"]["value"] == source["uid"], "the dashboard opens on this source"


def test_dashboard_provider_reads_the_mounted_json(profile: dict[str, Any]) -> None:
    (provider,) = load(GRAFANA_DIR / "provisioning" / "dashboards" / "stockstreamer.yaml")[
        "providers"
    ]
    target = mount_target(profile, "./grafana/dashboards")
    assert provider["type"] == "file" and provider["options"]["path"] == target
    env = profile["services"]["grafana"]["environment"]
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{target}/{DASHBOARD_JSON.name}"


def test_dashboard_json_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "stockstreamer" and board["title"]
    assert "id" not in board or board["id"] is None, "an id ties the file to one Grafana's database"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area
    for panel in panels(board):
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"{panel['title']} queries nothing"
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["refId"]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query, as promtool parses it in a recording rule (Grafana's $__ variables filled)."""
    exprs = dashboard_exprs(dashboard())
    rules = [
        {"record": f"panel:query:{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, expr in enumerate(exprs.values())
    ]
    path = tmp_path / "panels.yml"
    path.write_text(json.dumps({"groups": [{"name": "panels", "rules": rules}]}))
    assert f"{len(rules)} rules found" in promtool("check", "rules", str(path), cwd=tmp_path)


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    queried = set().union(*map(metric_names, dashboard_exprs(dashboard()).values()))
    missing = {what for what, metric in REQUIRED_PANEL_METRICS.items() if metric not in queried}
    assert not missing


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (symbol) (rate(a_total{x="y"}[$__rate_interval]))', {"a_total"}),
        ("time() - max(b) > 300 and on (job) c == 1", {"b", "c"}),
        ('histogram_quantile(0.95, sum by (le) (rate(d_bucket{le!="1"}[5m])))', {"d_bucket"}),
        ('count(ALERTS{alertstate="firing"}) or vector(0)', {"ALERTS"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_runbook_is_linked_from_the_readme() -> None:
    readme = (RUNBOOK.parents[1] / "README.md").read_text()
    section = readme.split("## Operations", 1)[1].split("\n## ", 1)[0]
    assert "(docs/operations.md)" in section
    assert readme.index("## Operations") < readme.index("## License")
    assert re.search(r"COMPOSE_PROFILES=observability", section)
