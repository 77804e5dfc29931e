"""docker-compose.yml: valid Compose, run like `make run`, passing only settings services read."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest

from services.common.config import env_names
from tests.deploy.compose import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    RDS_OVERRIDE,
    ROOT,
    SERVER_OVERRIDE,
    SERVICE_SETTINGS,
    MissingVariable,
    all_setting_names,
    documented,
    dotenv,
    interpolate_all,
    load_yaml,
    setting_names,
    settings_class,
    variables_used,
)

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
    assert set(load_yaml(override)["services"]) - set(base) <= {"rds-roles"}


def test_copied_env_example_is_enough(raw: dict[str, Any], example_env: dict[str, str]) -> None:
    interpolate_all(raw, example_env)
    without = {k: v for k, v in example_env.items() if k != "POSTGRES_PASSWORD"}
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        interpolate_all(raw, without)


@pytest.mark.parametrize("service", APPS)
def test_commands_are_the_ones_make_run_uses(compose: dict[str, Any], service: str) -> None:
    commands = procfile()
    assert service in commands, f"Procfile has no `{service}:` line"
    assert compose["services"][service]["command"] == commands[service]


def test_migrate_runs_what_make_migrate_runs(compose: dict[str, Any]) -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^migrate:.*\n\t(.+)$", makefile, re.MULTILINE)
    assert recipe, "Makefile has no migrate target"
    assert compose["services"]["migrate"]["command"] == recipe[1].replace("$(BIN)/", "").split()


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
        assert "DATABASE_URL" in environment, f"{service} needs the postgres container's URL"
    if service in LISTEN_HOST:
        assert environment[LISTEN_HOST[service]] == "0.0.0.0"


@pytest.mark.parametrize("service", [*APPS, "migrate"])
def test_container_environment_gives_valid_settings(
    compose: dict[str, Any],
    example_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    service: str,
) -> None:
    """What the container sees (.env then `environment:`) loads in the real settings class."""
    spec = compose["services"][service]
    for name, value in {**example_env, **spec.get("environment", {})}.items():
        monkeypatch.setenv(name, str(value))
    settings: Any = settings_class(service)(_env_file=None)  # type: ignore[call-arg]
    if service != "dashboard":
        url = urlsplit(settings.database_url)
        assert (url.hostname, url.port, url.password) == (
            "postgres",
            5432,
            example_env["POSTGRES_PASSWORD"],
        )
    if service == "dashboard":
        api = compose["services"]["api"]["environment"]
        assert settings.api_url == f"http://api:{api['STOCKSTREAMER_API_PORT']}"
        assert "localhost:5006" in settings.allowed_origins


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
    assert raw["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in ("fetcher", "api"):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully"
    assert services["dashboard"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_env_example_documents_every_setting_and_variable() -> None:
    names = documented(ENV_EXAMPLE.read_text())
    missing_settings = all_setting_names() - names
    assert not missing_settings, f".env.example lacks {sorted(missing_settings)}"
    compose_vars = set().union(*map(variables_used, (COMPOSE_FILE, RDS_OVERRIDE, SERVER_OVERRIDE)))
    assert not compose_vars - names - {"DATABASE_URL"}
    unknown = names - all_setting_names() - compose_vars - {"COMPOSE_PROFILES", "COMPOSE_FILE"}
    assert not unknown, f".env.example names {unknown}, which nothing reads"


def test_rds_override_swaps_the_database(raw: dict[str, Any]) -> None:
    override = load_yaml(RDS_OVERRIDE)["services"]
    assert override["postgres"]["profiles"], "the postgres container must not start"
    users = [n for n in SERVICE_SETTINGS if "DATABASE_URL" in raw["services"][n]["environment"]]
    for name in users:
        assert override[name]["environment"]["DATABASE_URL"].startswith("${DATABASE_URL:?")
        assert "postgres" not in override[name]["depends_on"]
    migrations = "".join(p.read_text() for p in (ROOT / "db" / "migrations").glob("*.sql"))
    granted = re.search(r"GRANT (.+) TO CURRENT_USER", override["rds-roles"]["command"][0])
    assert granted
    for role in granted[1].split(", "):
        assert f"CREATE ROLE {role} NOLOGIN" in migrations


def test_caddy_routes_to_the_container_ports(compose: dict[str, Any]) -> None:
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    proxy = compose["services"]["proxy"]
    placeholders = set(re.findall(r"\{\$(\w+)", caddyfile))
    assert placeholders <= set(proxy["environment"])
    api_port = compose["services"]["api"]["environment"][LISTEN_PORT["api"]]
    dashboard_port = compose["services"]["dashboard"]["environment"][LISTEN_PORT["dashboard"]]
    assert f"dynamic a api {api_port} {{" in caddyfile, "every API replica is an upstream"
    assert f"reverse_proxy dashboard:{dashboard_port}" in caddyfile
    assert re.search(r"@metrics path /metrics", caddyfile), "keep /metrics off the internet"
    mounted = [v.split(":")[0] for v in proxy["volumes"]]
    assert "./deploy/Caddyfile" in mounted
