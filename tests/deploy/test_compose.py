"""docker-compose.yml: valid Compose, run like `make run`, least privilege for every container."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import jsonschema
import pytest

from services.common import migrations
from services.common.config import env_names
from tests.deploy.compose import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    OBSERVABILITY_COMPOSE,
    RDS_OVERRIDE,
    ROOT,
    SERVER_OVERRIDE,
    all_setting_names,
    documented,
    dotenv,
    interpolate_all,
    load_yaml,
    make_secrets,
    secret_paths,
    setting_names,
    settings_class,
    variables_used,
)
from tests.deploy.db import LOGINS

APPS = ("fetcher", "api", "dashboard")
PUBLISHED = {"api": "STOCKSTREAMER_API_PORT", "dashboard": "STOCKSTREAMER_DASHBOARD_PORT"}
LISTEN_HOST = {
    "fetcher": "STOCKSTREAMER_FETCHER_METRICS_HOST",
    "api": "STOCKSTREAMER_API_HOST",
    "dashboard": "STOCKSTREAMER_DASHBOARD_HOST",
}
LISTEN_PORT = {
    "fetcher": "STOCKSTREAMER_FETCHER_METRICS_PORT",
    "api": "STOCKSTREAMER_API_PORT",
    "dashboard": "STOCKSTREAMER_DASHBOARD_PORT",
}
# Each container's secrets, and no more: the superuser's password only where the schema is kept.
SECRETS = {
    "postgres": {"postgres_password"},
    "migrate": {"migrate_database_url"},
    "db-users": {
        "postgres_password",
        "fetcher_db_password",
        "api_db_password",
        "monitor_db_password",
    },
    "fetcher": {"fetcher_database_url", "finnhub_api_key", "twelvedata_api_key"},
    "api": {"api_database_url"},
    "dashboard": set(),
    "proxy": set(),
}
# Capabilities a container may add back after dropping all (entrypoints that start as root).
CAP_ADD = {
    "postgres": {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"},
    "proxy": {"NET_BIND_SERVICE"},
}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return dotenv(ENV_EXAMPLE.read_text())


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any], example_env: dict[str, str]) -> dict[str, Any]:
    """The compose model after `cp .env.example .env`."""
    model: dict[str, Any] = interpolate_all(raw, example_env)
    return model


def procfile() -> dict[str, list[str]]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {n.strip(): shlex.split(c) for n, _, c in (ln.partition(":") for ln in lines if ln)}


def mentions(spec: dict[str, Any]) -> str:
    """Everything a service runs or is given, as one string."""
    parts = [spec.get("entrypoint"), spec.get("command"), spec.get("environment")]
    return json.dumps(parts)


def test_compose_file_matches_the_compose_spec() -> None:
    result = subprocess.run(  # noqa: S603
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE_FILE),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("override", [RDS_OVERRIDE, SERVER_OVERRIDE], ids=lambda p: p.name)
def test_overrides_match_the_compose_spec(override: Path) -> None:
    schema_file = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [e.message for e in validator.iter_errors(load_yaml(override))]
    assert not errors
    base = load_yaml(COMPOSE_FILE)["services"]
    assert set(load_yaml(override)["services"]) <= set(base)


def test_copied_env_example_is_enough(raw: dict[str, Any], example_env: dict[str, str]) -> None:
    interpolate_all(raw, {})
    assert not {k for k in example_env if re.search(r"PASSWORD|SECRET|_KEY$|TOKEN", k)}, (
        ".env reaches every container: secrets are files, not .env lines"
    )


@pytest.mark.parametrize("service", APPS)
def test_commands_are_the_ones_make_run_uses(compose: dict[str, Any], service: str) -> None:
    commands = procfile()
    assert service in commands, f"Procfile has no `{service}:` line"
    assert compose["services"][service]["command"] == commands[service]


def test_migrate_runs_dbmate_as_make_migrate_does(compose: dict[str, Any]) -> None:
    """The same dbmate arguments as services.common.migrations (what `make migrate` runs)."""
    with mock.patch("services.common.migrations.subprocess.run") as run:
        run.return_value = subprocess.CompletedProcess([], 0, "", "")
        migrations.migrate("postgresql://example.invalid/stockstreamer")
    native = [str(a) for a in run.call_args.args[0][1:]]
    native[native.index("--migrations-dir") + 1] = "db/migrations"
    command = compose["services"]["migrate"]["command"]
    assert command[:2] == ["sh", "-c"]
    script = shlex.split(command[2])
    assert script[0] == "DATABASE_URL=$(cat $DATABASE_URL_FILE)"
    assert script[1:3] == ["exec", "dbmate"] and script[3:] == native


@pytest.mark.parametrize("service", [*APPS, "migrate"])
def test_every_variable_passed_is_a_setting_of_that_service(
    compose: dict[str, Any], service: str
) -> None:
    passed = set(compose["services"][service].get("environment", {}))
    unknown = passed - setting_names(settings_class(service))
    assert not unknown, f"{service} is given {unknown}, which it does not read"


@pytest.mark.parametrize("service", [*APPS, "migrate"])
def test_required_settings_are_passed(
    compose: dict[str, Any], example_env: dict[str, str], service: str
) -> None:
    cls = settings_class(service)
    environment = compose["services"][service].get("environment", {})
    required = {n for n, f in cls.model_fields.items() if f.is_required()}
    names = {field: env for env, field in env_names(cls).items()}
    missing = {names[f] for f in required} - set(environment) - set(example_env)
    assert not missing
    if service != "dashboard":
        assert environment["DATABASE_URL_FILE"].startswith("/run/secrets/")
    if service in LISTEN_HOST:
        assert environment[LISTEN_HOST[service]] == "0.0.0.0"


@pytest.mark.parametrize("service", [*APPS, "migrate"])
def test_container_environment_gives_valid_settings(
    compose: dict[str, Any],
    example_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    service: str,
) -> None:
    """What the container sees (.env, `environment:`, its secret files) loads in the real class."""
    secrets_dir = make_secrets(tmp_path / "secrets")
    paths = secret_paths(compose, secrets_dir)
    spec = compose["services"][service]
    for name, value in {**example_env, **spec.get("environment", {})}.items():
        monkeypatch.setenv(name, paths.get(str(value), str(value)))
    settings: Any = settings_class(service)(_env_file=None)
    if service != "dashboard":
        url = urlsplit(settings.database_url)
        assert (url.hostname, url.port, url.path) == ("postgres", 5432, "/stockstreamer")
        assert url.password and len(url.password) >= 32
        user = LOGINS[service][0] if service in LOGINS else "stockstreamer"
        assert url.username == user
    if service == "dashboard":
        api = compose["services"]["api"]["environment"]
        assert settings.api_url == f"http://api:{api['STOCKSTREAMER_API_PORT']}"
        assert "localhost:5006" in settings.allowed_origins


def test_each_container_gets_only_its_own_secrets(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == set(SECRETS)
    for name, spec in services.items():
        given = {s if isinstance(s, str) else s["source"] for s in spec.get("secrets", [])}
        assert given == SECRETS[name], name
        used = set(re.findall(r"/run/secrets/(\w+)", mentions(spec)))
        assert used <= given, f"{name} reads {used - given} without being given it"
        assert "env_file" not in spec or name in (*APPS, "migrate"), name
        environment = spec.get("environment", {})
        literal = [k for k, v in environment.items() if re.search(r"PASSWORD|KEY$|TOKEN", k) and v]
        assert not literal, f"{name} gets a secret through its environment: {literal}"
    assert set(compose["secrets"]) == set().union(*SECRETS.values())
    # A DATABASE_URL in .env (for native runs) must not override a container's secret file.
    for name in ("fetcher", "api"):
        assert services[name]["environment"]["DATABASE_URL"] == ""


def test_make_secrets_writes_every_file_compose_names(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    secrets_dir = make_secrets(tmp_path / "secrets")
    for name, path in secret_paths(compose, secrets_dir).items():
        assert Path(path).is_file(), name
    first = {p.name: p.read_text() for p in secrets_dir.iterdir()}
    assert first["finnhub-api-key"] == "" and first["twelvedata-api-key"] == ""
    (secrets_dir / "finnhub-api-key").chmod(0o600)
    (secrets_dir / "finnhub-api-key").write_text("my-key")
    again = {p.name: p.read_text() for p in make_secrets(secrets_dir).iterdir()}
    assert again == {**first, "finnhub-api-key": "my-key"}, "kept on a second run"
    assert oct(secrets_dir.stat().st_mode & 0o777) == "0o700"
    for service, (user, _) in LOGINS.items():
        url = urlsplit((secrets_dir / f"{service}-database-url").read_text())
        assert url.username == user
        assert url.password == first[f"{service}-db-password"]


def test_users_sql_creates_the_logins_the_urls_name() -> None:
    sql = (ROOT / "db" / "users.sql").read_text()
    for user, role in LOGINS.values():
        assert f"'{user}'" in sql and "CREATE ROLE %I LOGIN" in sql
        assert f"GRANT {role} TO {user};" in sql
    migrations_sql = "".join(p.read_text() for p in (ROOT / "db" / "migrations").glob("*.sql"))
    for _, role in LOGINS.values():
        assert f"CREATE ROLE {role} NOLOGIN" in migrations_sql


@pytest.mark.parametrize("service", list(SECRETS))
def test_every_container_is_hardened(compose: dict[str, Any], service: str) -> None:
    spec = compose["services"][service]
    assert spec["cap_drop"] == ["ALL"]
    assert set(spec.get("cap_add", [])) == CAP_ADD.get(service, set())
    assert spec["security_opt"] == ["no-new-privileges:true"]
    assert spec["read_only"] is True
    assert re.fullmatch(r"\d+m", spec["mem_limit"]), "a memory limit"
    logging = spec["logging"]
    assert logging["driver"] == "local" and logging["options"]["max-size"]
    assert spec.get("privileged") is not True and "network_mode" not in spec


@pytest.mark.parametrize("service", APPS)
def test_healthcheck_and_ports_follow_the_listen_settings(
    compose: dict[str, Any], service: str
) -> None:
    spec = compose["services"][service]
    port = spec["environment"][LISTEN_PORT[service]]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(spec["healthcheck"]["test"])
    assert spec["restart"] == "unless-stopped"
    published = spec.get("ports", [])
    if service in PUBLISHED:
        assert published == [f"127.0.0.1:{port}:{port}"], "published on loopback by default"
    else:
        assert not published


def test_only_dashboard_and_api_are_published(compose: dict[str, Any]) -> None:
    default = {n for n, s in compose["services"].items() if "profiles" not in s}
    assert {n for n in default if compose["services"][n].get("ports")} == set(PUBLISHED)
    assert compose["services"]["proxy"]["profiles"] == ["proxy"]
    assert compose["services"]["proxy"]["ports"][:2] == ["80:80", "443:443"]
    # On a server only the proxy is published.
    server = load_yaml(SERVER_OVERRIDE)["services"]
    assert {n for n, s in server.items() if s.get("ports") == []} == set(PUBLISHED)


def test_startup_order_and_database(compose: dict[str, Any], raw: dict[str, Any]) -> None:
    services = compose["services"]
    postgres = services["postgres"]
    assert re.fullmatch(r"postgres:\d+(-\w+)?", postgres["image"]), "pin the major version"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in raw["volumes"], "data lives in a named volume"
    assert "POSTGRES_PASSWORD" not in postgres["environment"], "read from its secret file"
    assert "/run/secrets/postgres_password" in " ".join(postgres["entrypoint"])
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["db-users"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    for name in ("migrate", "db-users"):
        assert services[name]["restart"] == "no"
    for name in ("fetcher", "api"):
        condition = services[name]["depends_on"]["db-users"]["condition"]
        assert condition == "service_completed_successfully"
    assert services["dashboard"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_env_example_documents_every_setting_and_variable() -> None:
    names = documented(ENV_EXAMPLE.read_text())
    missing_settings = all_setting_names() - names
    assert not missing_settings, f".env.example lacks {sorted(missing_settings)}"
    files = (COMPOSE_FILE, RDS_OVERRIDE, SERVER_OVERRIDE, OBSERVABILITY_COMPOSE)
    compose_vars = set().union(*map(variables_used, files))
    assert not compose_vars - names
    unknown = names - all_setting_names() - compose_vars - {"COMPOSE_PROFILES", "COMPOSE_FILE"}
    assert not unknown, f".env.example names {unknown}, which nothing reads"


def test_rds_override_swaps_the_database() -> None:
    env = {"STOCKSTREAMER_RDS_CA_FILE": "/ca.pem", "STOCKSTREAMER_RDS_ADDRESS": "db.example"}
    override = interpolate_all(load_yaml(RDS_OVERRIDE), env)["services"]
    assert override["postgres"]["profiles"], "the postgres container must not start"
    assert "postgres" not in override["migrate"]["depends_on"]
    users = override["db-users"]
    assert users["environment"]["PGSSLMODE"] == "verify-full"
    assert "iam=on" in users["command"], "the services log in with IAM tokens on RDS"
    assert users["secrets"] == ["postgres_password"]
    for name in ("migrate", "db-users", "fetcher", "api"):
        mounts = [v.split(":")[1] for v in override[name]["volumes"]]
        assert users["environment"]["PGSSLROOTCERT"] in mounts, f"{name} lacks the RDS CA"


def test_caddy_routes_to_the_container_ports(compose: dict[str, Any]) -> None:
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    proxy = compose["services"]["proxy"]
    placeholders = set(re.findall(r"\{\$(\w+)", caddyfile))
    assert placeholders <= set(proxy["environment"])
    api_port = compose["services"]["api"]["environment"][LISTEN_PORT["api"]]
    dashboard_port = compose["services"]["dashboard"]["environment"][LISTEN_PORT["dashboard"]]
    assert f"dynamic a api {api_port} {{" in caddyfile, "every API replica is an upstream"
    assert f"reverse_proxy dashboard:{dashboard_port}" in caddyfile
    private = re.search(r"@private path (.+)", caddyfile)
    assert private, "keep /metrics and the CDN-loading docs off the internet"
    assert {"/metrics", "/docs", "/redoc"} <= set(private[1].split())
    mounted = [v.split(":")[0] for v in proxy["volumes"]]
    assert "./deploy/Caddyfile" in mounted
    # Grafana (observability profile) on its container port; Prometheus has no login: never routed.
    (grafana_port,) = load_yaml(OBSERVABILITY_COMPOSE)["services"]["grafana"]["ports"]
    assert f"reverse_proxy grafana:{grafana_port.rsplit(':', 1)[1]}" in caddyfile
    assert not re.search(r"reverse_proxy[^\n]*(prometheus|9090|exporter)", caddyfile)
    assert proxy["environment"]["STOCKSTREAMER_GRAFANA_ROUTE"] == "off", "off by default"


def test_caddy_sends_security_headers() -> None:
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    for header in ("Strict-Transport-Security", "X-Content-Type-Options", "Referrer-Policy"):
        assert re.search(rf"^\s+{header} ", caddyfile, re.MULTILINE), header
    policies = re.findall(r'Content-Security-Policy "([^"]+)"', caddyfile)
    assert len(policies) == 3, "one each for the API, Grafana (when routed) and the dashboard"
    for policy in policies:
        assert "frame-ancestors 'none'" in policy
        sources = " ".join(re.findall(r"(?:default|script|connect)-src ([^;]+)", policy))
        assert "*" not in sources and "http" not in sources, "no third-party script or socket"
    assert re.search(r"^\s+log \{", caddyfile, re.MULTILINE), "access logs on"
