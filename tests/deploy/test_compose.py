"""docker-compose.yml: valid Compose, run like `make run`, least privilege for every container."""

from __future__ import annotations

import json
import math
import os
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

from services.api.config import ApiSettings
from services.api.workers import OPEN_FILES_MARGIN
from services.common import migrations
from services.common.config import env_names
from services.secrets import CONSUMERS, VENDOR_KEYS
from tests.deploy.compose import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    OBSERVABILITY_COMPOSE,
    RDS_OVERRIDE,
    ROOT,
    SERVER_OVERRIDE,
    WEB_OVERRIDE,
    MissingVariable,
    all_setting_names,
    documented,
    dotenv,
    interpolate_all,
    load_yaml,
    make_secrets,
    mounts,
    secret_paths,
    secrets_volume,
    setting_names,
    settings_class,
    variables_used,
)
from tests.deploy.db import LOGINS
from tests.deploy.hcl import load_terraform
from tests.utils.tools import missing, require_tool

APPS = ("fetcher", "api", "alerts", "dashboard")
PUBLISHED = {"api": "STOCKSTREAMER_API_PORT", "dashboard": "STOCKSTREAMER_DASHBOARD_PORT"}
LISTEN_HOST = {
    "fetcher": "STOCKSTREAMER_FETCHER_METRICS_HOST",
    "api": "STOCKSTREAMER_API_HOST",
    "alerts": "STOCKSTREAMER_ALERTS_HOST",
    "dashboard": "STOCKSTREAMER_DASHBOARD_HOST",
}
LISTEN_PORT = {
    "fetcher": "STOCKSTREAMER_FETCHER_METRICS_PORT",
    "api": "STOCKSTREAMER_API_PORT",
    "alerts": "STOCKSTREAMER_ALERTS_PORT",
    "dashboard": "STOCKSTREAMER_DASHBOARD_PORT",
}
# Each container's secrets, and no more: the superuser's password only where the schema is kept,
# and no login's password in clear text anywhere but its own service's URL.
SECRETS = {
    "secrets": set(),  # makes them all, into the volumes below: it mounts no /run/secrets
    "postgres": {"postgres_password"},
    "migrate": {"migrate_database_url"},
    "db-users": {
        "postgres_password",
        "fetcher_db_verifier",
        "api_db_verifier",
        "monitor_db_verifier",
        "alerts_db_verifier",
    },
    "fetcher": {
        "fetcher_database_url",
        "finnhub_api_key",
        "twelvedata_api_key",
        "alpaca_api_key_id",
        "alpaca_api_secret_key",
    },
    "api": {"api_database_url", "api_tokens"},
    # its channels' URLs hold their credentials: a secret file, never the database or .env
    "alerts": {"alerts_database_url", "alert_channels"},
    "dashboard": set(),
    "proxy": set(),
}
PROFILE_SECRETS = {
    "prometheus": set(),
    "postgres-exporter": {"exporter_db_password"},
    "grafana": {"grafana_admin_password"},
}
# Capabilities a container may add back after dropping all (entrypoints that start as root).
CAP_ADD = {
    # to give each file to its reader; to read chosen files deploy/make-secrets gave to others
    "secrets": {"CHOWN", "DAC_READ_SEARCH"},
    "postgres": {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"},
    "proxy": {"NET_BIND_SERVICE"},
}
# Memory (MiB) for every container of the default stack with the proxy, one-shots included; and
# what observability adds: on the default instance (t3.medium, 4 GiB), with 512 MiB the host's.
STACK_BUDGET_MIB = 2560
OBSERVABILITY_BUDGET_MIB = 1024
# Streams the API's defaults must hold open at once, on the workers its CPUs give it.
VIEWERS = 10_000
# Measured (docker-compose.yml's postgres comment): what one backend holds of its own once it has
# run our history queries, and the postmaster's and background processes' together.
BACKEND_MIB = 16
POSTMASTER_MIB = 7
AUTOVACUUM_WORKER_MIB = 5


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


@pytest.mark.parametrize(
    "override", [RDS_OVERRIDE, SERVER_OVERRIDE, WEB_OVERRIDE], ids=lambda p: p.name
)
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
    paths = secret_paths(secrets_dir)
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


def test_a_vendor_chain_finds_each_vendors_keys_in_its_files(
    compose: dict[str, Any],
    example_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Keys chosen in the secrets directory for several vendors at once, the chain and the
    market's settings in .env: the fetcher's settings hold every key, read from its own file."""
    secrets_dir = make_secrets(tmp_path / "secrets")
    chosen = {key: f"{key}-value" for keys in VENDOR_KEYS.values() for key in keys}
    for name, value in chosen.items():
        (secrets_dir / name).write_text(value)
    paths = secret_paths(secrets_dir)
    spec = compose["services"]["fetcher"]
    dot_env = {
        **example_env,
        "STOCKSTREAMER_PROVIDER": "alpaca,finnhub,twelvedata",
        "STOCKSTREAMER_HISTORY_PROVIDER": "alpaca",
        "STOCKSTREAMER_CALENDAR": "XNYS",
        "STOCKSTREAMER_EXTENDED_HOURS": "true",
    }
    vendor_settings = {k for k in dot_env if k not in example_env}
    assert not vendor_settings & set(spec["environment"]), "from .env: compose fixes none of them"
    for name, value in {**dot_env, **spec["environment"]}.items():
        monkeypatch.setenv(name, paths.get(str(value), str(value)))
    settings: Any = settings_class("fetcher")(_env_file=None)
    # The fetcher's file for a key is named as the setting that holds it.
    fetcher = next(c for c in CONSUMERS if c.name == "fetcher")
    for file, secret in fetcher.files.items():
        if secret in chosen:
            assert getattr(settings, file).get_secret_value() == chosen[secret], file
    assert settings.calendar == "XNYS" and settings.extended_hours is True


def everything() -> dict[str, Any]:
    """docker-compose.yml with its included profile, after `cp .env.example .env`."""
    env = dotenv(ENV_EXAMPLE.read_text())
    model: dict[str, Any] = interpolate_all(load_yaml(COMPOSE_FILE), env)
    profile = interpolate_all(load_yaml(OBSERVABILITY_COMPOSE), env)
    model["services"] |= profile["services"]
    for key in ("networks", "volumes"):
        model[key] = {**profile.get(key, {}), **model.get(key, {})}
    return model


def test_each_container_gets_only_its_own_secrets(compose: dict[str, Any]) -> None:
    """Its own volume at /run/secrets, holding exactly the files services.secrets gives it."""
    services = everything()["services"]
    assert set(services) == set(SECRETS) | set(PROFILE_SECRETS)
    consumers = {c.name: c for c in CONSUMERS}
    for name, spec in services.items():
        expected = {**SECRETS, **PROFILE_SECRETS}[name]
        volume = secrets_volume(spec)
        if expected:
            assert volume == f"secrets-{name}", name
            assert set(consumers[name].files) == expected, name
        else:
            assert volume is None and name not in consumers, name
        assert "secrets" not in spec, "no compose secrets: their files would have to exist first"
        used = set(re.findall(r"/run/secrets/(\w+)", mentions(spec)))
        assert used <= expected, f"{name} reads {used - expected} without being given it"
        others = {v.split(":")[0] for v in spec.get("volumes", [])} - {volume}
        if name != "secrets":
            assert not {v for v in others if v.startswith("secrets-")}, f"{name}: another's"
        environment = spec.get("environment", {})
        literal = [
            k
            for k, v in environment.items()
            if re.search(r"PASSWORD|KEY$|TOKEN", k) and not k.endswith("_FILE") and v
        ]
        assert not literal, f"{name} gets a secret through its environment: {literal}"
    assert "secrets" not in compose
    # A DATABASE_URL in .env (for native runs) must not override a container's secret file.
    for name in ("fetcher", "api", "alerts"):
        assert services[name]["environment"]["DATABASE_URL"] == ""


def test_the_secrets_one_shot_makes_them_before_anything_else(compose: dict[str, Any]) -> None:
    services = everything()["services"]
    one_shot = services["secrets"]
    assert one_shot["restart"] == "no" and one_shot["user"] == "0:0"
    assert one_shot["network_mode"] == "none", "it needs no network"
    assert one_shot["image"] == services["api"]["image"] and one_shot["build"] == {"context": "."}
    volumes = mounts(one_shot)
    assert volumes["/chosen"] == "./secrets:ro", "chosen values: read, never written"
    assert volumes["/store"] == "secrets-store"
    assert {t: v for t, v in volumes.items() if t.startswith("/consumers/")} == {
        f"/consumers/{c.name}": f"secrets-{c.name}" for c in CONSUMERS
    }
    assert one_shot["command"] == [
        "python", "-m", "services.secrets", "install",
        "--source", "/chosen", "--store", "/store", "--target", "/consumers",
    ]  # fmt: skip

    def waits_for_secrets(name: str) -> bool:
        depends = services[name].get("depends_on", {})
        if depends.get("secrets", {}).get("condition") == "service_completed_successfully":
            return True
        return any(waits_for_secrets(other) for other in depends)

    for name in services:
        if name not in ("secrets", "prometheus"):  # Prometheus holds no secret
            assert waits_for_secrets(name), f"{name} may start before its secrets exist"


def test_the_one_shot_needs_no_more_than_its_capabilities(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """Its command, twice, as root with only compose's cap_add: files chosen on a server
    (deploy/make-secrets as root gives each to its reader), then a value chosen anew."""
    if os.geteuid() != 0:
        missing("needs root, as the container's user is (CI runs as root)")
    setpriv = require_tool("setpriv", package="util-linux")
    spec = compose["services"]["secrets"]
    chosen, store, target = tmp_path / "chosen", tmp_path / "store", tmp_path / "consumers"
    make_secrets(chosen)
    caps = ",".join(f"+{cap.lower()}" for cap in spec["cap_add"])
    argv = [setpriv, f"--bounding-set=-all,{caps}", "--inh-caps=-all", sys.executable, "-S"]
    argv += list(spec["command"][1:])
    paths = {"/chosen": chosen, "/store": store, "/consumers": target}
    argv = [str(paths.get(a, a)) for a in argv]
    for run in range(2):
        store.mkdir(exist_ok=True)
        target.mkdir(exist_ok=True)
        for consumer in CONSUMERS:
            (target / consumer.name).mkdir(exist_ok=True)
        result = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, check=False, timeout=60
        )
        assert result.returncode == 0, f"run {run + 1}: {result.stderr}"
        (chosen / "api-db-password").chmod(0o600)
        (chosen / "api-db-password").write_text("chosen-anew")
    url = target / "api" / "api_database_url"
    assert ":chosen-anew@" in url.read_text() and url.stat().st_uid == 10001


def test_make_secrets_writes_every_file_compose_names(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    secrets_dir = make_secrets(tmp_path / "secrets")
    for name, path in secret_paths(secrets_dir).items():
        assert Path(path).is_file(), name
    first = {p.name: p.read_text() for p in secrets_dir.iterdir()}
    assert all(first[key] == "" for keys in VENDOR_KEYS.values() for key in keys), "to fill in"
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


@pytest.mark.parametrize("service", [*SECRETS, *PROFILE_SECRETS])
def test_every_container_is_hardened(service: str) -> None:
    spec = everything()["services"][service]
    assert spec["cap_drop"] == ["ALL"]
    assert set(spec.get("cap_add", [])) == CAP_ADD.get(service, set())
    assert spec["security_opt"] == ["no-new-privileges:true"]
    assert spec["read_only"] is True
    assert re.fullmatch(r"\d+m", spec["mem_limit"]), "a memory limit"
    # the API runs a worker process per CPU: two, which a two-vCPU instance has
    assert 0 < float(spec["cpus"]) <= (2 if service == "api" else 1), "a CPU limit"
    assert 0 < int(spec["pids_limit"]) <= 128, "a process limit"
    logging = spec["logging"]
    assert logging["driver"] == "local" and logging["options"]["max-size"]
    assert spec.get("privileged") is not True
    assert spec.get("network_mode", "none") == "none", "no host or shared network namespace"


def mib(limit: str) -> int:
    assert limit.endswith("m"), limit
    return int(limit[:-1])


def test_memory_limits_fit_the_default_instance() -> None:
    """Every container of the default stack with the proxy (one-shots included: they run at
    every start) within the budget, and the observability profile within its own."""
    services = everything()["services"]
    default = {
        n: mib(s["mem_limit"])
        for n, s in services.items()
        if s.get("profiles") != ["observability"]
    }
    profile = {n: mib(s["mem_limit"]) for n, s in services.items() if n not in default}
    assert sum(default.values()) <= STACK_BUDGET_MIB, default
    assert sum(profile.values()) <= OBSERVABILITY_BUDGET_MIB, profile


def test_terraform_sizes_the_instance_by_these_limits() -> None:
    """Terraform's memory numbers are compose's own sums (it picks and checks the instance)."""
    services = everything()["services"]
    default = sum(
        mib(s["mem_limit"]) for s in services.values() if s.get("profiles") != ["observability"]
    )
    profile = sum(
        mib(s["mem_limit"]) for s in services.values() if s.get("profiles") == ["observability"]
    )
    numbers = load_terraform(ROOT / "terraform").locals["compose_memory_mib"]
    # An API instance of the scale-out mode runs these alone (deploy/compose.web.yaml).
    web = sum(mib(services[n]["mem_limit"]) for n in ("secrets", "api", "dashboard"))
    assert numbers == {
        "default_stack": default,
        "observability": profile,
        "extra_api_replica": mib(services["api"]["mem_limit"]),
        "web_stack": web,
    }


def postgres_settings(compose: dict[str, Any]) -> dict[str, str]:
    command = compose["services"]["postgres"]["command"]
    assert command[0] == "postgres" and command[1::2] == ["-c"] * (len(command) // 2)
    return dict(flag.split("=", 1) for flag in command[2::2])


def test_postgres_worst_case_fits_its_limit(compose: dict[str, Any]) -> None:
    """Every connection at once, each with its caches and a full work_mem, autovacuum too."""
    settings = postgres_settings(compose)

    def size(name: str) -> int:
        value = settings[name]
        assert value.endswith("MB"), f"{name}={value}: say it in MB"
        return int(value[:-2])

    assert settings["hash_mem_multiplier"] == "1", "hashes within work_mem too"
    assert settings["max_parallel_workers_per_gather"] == "0", "no extra backends per query"
    worst = (
        size("shared_buffers")
        + size("wal_buffers")
        + int(settings["max_connections"]) * (BACKEND_MIB + size("work_mem"))
        + int(settings["autovacuum_max_workers"])
        * (AUTOVACUUM_WORKER_MIB + size("autovacuum_work_mem"))
        + POSTMASTER_MIB
    )
    limit = mib(compose["services"]["postgres"]["mem_limit"])
    assert worst <= limit, f"worst case {worst} MiB over the {limit} MiB limit"
    # Room for what connects: the fetcher (3), the alerts service (3), the exporter (3), the
    # superuser's 3 reserved and 4 for the one-shots (db/users.sql's limits), and two API
    # replicas: each worker's share of the pool and its listener.
    api = compose["services"]["api"]
    workers = math.ceil(float(api["cpus"]))
    replica = workers * (api_settings(api).worker_share(workers).api_pool_size + 1)
    assert workers == 2 and replica <= 8
    assert 3 + 3 + 3 + 3 + 4 + 2 * replica <= int(settings["max_connections"])


def api_settings(spec: dict[str, Any]) -> ApiSettings:
    """The API container's settings, as its environment gives them (no secret needed: not the
    token file either, which the API reads as it starts)."""
    environment = {
        k: v
        for k, v in spec["environment"].items()
        if k.startswith("STOCKSTREAMER_") and not k.endswith("_FILE")
    }
    return ApiSettings.model_validate(
        {env_names(ApiSettings)[k]: v for k, v in environment.items()}
    )


def test_the_api_container_admits_ten_thousand_streams(compose: dict[str, Any]) -> None:
    """The stream cap of its workers (one per CPU), and an open-file limit for every one."""
    api = compose["services"]["api"]
    settings = api_settings(api)
    assert settings.api_workers is None, "a worker per CPU of its limit"
    nofile = api["ulimits"]["nofile"]
    # its two CPUs, or one (STOCKSTREAMER_API_CPUS=1 on a one-CPU host)
    for workers in {math.ceil(float(api["cpus"])), 1}:
        share = settings.worker_share(workers)
        assert share.api_max_streams * workers >= VIEWERS * 1.1, "room for an uneven spread"
        needed = share.api_limit_concurrency + share.api_pool_size + OPEN_FILES_MARGIN
        assert nofile["soft"] == nofile["hard"] >= needed


def test_networks_keep_the_database_and_monitoring_from_the_edge() -> None:
    """PostgreSQL, the exporter and Prometheus share no network with Caddy or the dashboard
    where they listen; the backend has no way out (tested live in test_compose_engine.py)."""
    model = everything()
    services, networks = model["services"], model["networks"]

    def joined(name: str) -> set[str]:
        value = services[name].get("networks", [])
        return set(value if isinstance(value, list) else value)

    assert networks["backend"]["internal"] is True
    assert networks["scrape"]["internal"] is True and networks["grafana-route"]["internal"] is True
    front = joined("proxy") | joined("dashboard")
    assert joined("postgres") == {"backend"} and joined("postgres-exporter") == {"backend"}
    assert not joined("postgres") & front and not joined("postgres-exporter") & front
    # Prometheus scrapes the dashboard on `scrape`, but listens only on `monitoring`.
    prometheus = services["prometheus"]
    listen = next(a for a in prometheus["command"] if a.startswith("--web.listen-address="))
    alias = listen.split("=", 1)[1].rsplit(":", 1)[0]
    assert prometheus["networks"]["monitoring"]["aliases"] == [alias]
    assert joined("prometheus") & front == {"scrape"}
    assert "monitoring" not in front and "monitoring" in joined("grafana")
    assert not (networks["monitoring"] or {}).get("internal"), "its published port arrives there"
    assert joined("api") == {"edge", "backend"} and "egress" in joined("fetcher")
    # the alerts service: the database, and its channels' webhooks out on the internet
    assert joined("alerts") == {"backend", "egress"}
    assert joined("grafana") & joined("proxy") == {"grafana-route"}
    assert joined("dashboard") & joined("api") == {"edge"}


def test_grafana_writes_only_its_volume_and_a_tmpfs() -> None:
    grafana = everything()["services"]["grafana"]
    assert grafana["read_only"] is True and grafana["tmpfs"] == ["/tmp"]  # noqa: S108
    assert grafana["environment"]["GF_LOG_MODE"] == "console", "no log file on a read-only root"
    assert mounts(grafana)["/var/lib/grafana"] == "grafana-data"


def test_db_users_sets_verifiers_and_retention_from_env(compose: dict[str, Any]) -> None:
    spec = compose["services"]["db-users"]
    script = " ".join(spec["command"])
    for login in ("fetcher", "api", "alerts", "monitor"):
        assert f"\\set {login}_verifier `cat /run/secrets/{login}_db_verifier`" in script
    for variable, setting in (("retention", "RETENTION"), ("retention_minute", "RETENTION_MINUTE")):
        assert f'\\set {variable} `printf %s "$STOCKSTREAMER_{setting}"`' in script
    assert spec["env_file"] == [{"path": ".env", "required": False}], "reads .env as the apps do"


def test_trusted_proxies_are_the_ones_in_front(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["api"]["environment"]["STOCKSTREAMER_TRUSTED_PROXIES"] == "proxy,dashboard"
    assert services["dashboard"]["environment"]["STOCKSTREAMER_TRUSTED_PROXIES"] == "proxy"


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
    for name in ("fetcher", "api", "alerts"):
        condition = services[name]["depends_on"]["db-users"]["condition"]
        assert condition == "service_completed_successfully"
    assert services["dashboard"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_env_example_documents_every_setting_and_variable() -> None:
    names = documented(ENV_EXAMPLE.read_text())
    missing_settings = all_setting_names() - names
    assert not missing_settings, f".env.example lacks {sorted(missing_settings)}"
    files = (COMPOSE_FILE, RDS_OVERRIDE, SERVER_OVERRIDE, WEB_OVERRIDE, OBSERVABILITY_COMPOSE)
    compose_vars = set().union(*map(variables_used, files))
    assert not compose_vars - names
    unknown = names - all_setting_names() - compose_vars - {"COMPOSE_PROFILES", "COMPOSE_FILE"}
    assert not unknown, f".env.example names {unknown}, which nothing reads"


def test_rds_override_swaps_the_database(compose: dict[str, Any]) -> None:
    env = {
        "STOCKSTREAMER_RDS_CA_FILE": "/ca.pem",
        "STOCKSTREAMER_RDS_ADDRESS": "db.example",
        "STOCKSTREAMER_SECRETS_DIR": "/var/lib/stockstreamer/secrets",
    }
    override = interpolate_all(load_yaml(RDS_OVERRIDE), env)["services"]
    assert override["postgres"]["profiles"], "the postgres container must not start"
    assert "postgres" not in override["migrate"]["depends_on"]
    users = override["db-users"]
    assert users["environment"]["PGSSLMODE"] == "verify-full"
    assert "iam=on" in users["command"], "the services log in with IAM tokens on RDS"
    assert "secrets" not in users, "its own secrets volume still: the master user's password"
    script = " ".join(users["command"])
    assert "retention `" in script and "retention_minute `" in script
    for name in ("migrate", "db-users", "fetcher", "api", "alerts"):
        targets = [v.split(":")[1] for v in override[name]["volumes"]]
        assert users["environment"]["PGSSLROOTCERT"] in targets, f"{name} lacks the RDS CA"
    # RDS is outside the internal backend network.
    for name in ("migrate", "db-users"):
        assert override[name]["networks"] == ["egress"]
    assert not compose["networks"]["edge"], "the API's way out: edge is not internal"
    # The token URLs the instance renews in place, mounted over the one-shot's copies, so that
    # each new connection reads the current one.
    for name in ("fetcher", "api", "alerts"):
        assert mounts(override[name])[f"/run/secrets/{name}_database_url"] == (
            f"{env['STOCKSTREAMER_SECRETS_DIR']}/{name}-database-url:ro"
        )


def test_web_override_runs_api_and_dashboard_behind_the_load_balancer(
    compose: dict[str, Any],
) -> None:
    """The scale-out mode's API instances: the API waits for its secret files alone (the
    migrations run elsewhere), both publish their own port on every interface, and each believes
    the load balancer's X-Forwarded-For (and the API the dashboard's, as behind Caddy)."""
    env = {"STOCKSTREAMER_LOAD_BALANCER_NETWORKS": "10.0.0.0/24,10.0.1.0/24"}
    web = interpolate_all(load_yaml(WEB_OVERRIDE), env)["services"]
    assert set(web) == {"api", "dashboard"}
    assert web["api"]["depends_on"] == {"secrets": {"condition": "service_completed_successfully"}}
    for name, port in (("api", "STOCKSTREAMER_API_PORT"), ("dashboard", LISTEN_PORT["dashboard"])):
        container = compose["services"][name]["environment"][port]
        assert web[name]["ports"] == [f"{container}:{container}"], name
    base = compose["services"]
    assert web["api"]["environment"]["STOCKSTREAMER_TRUSTED_PROXIES"] == (
        base["api"]["environment"]["STOCKSTREAMER_TRUSTED_PROXIES"].replace(
            "proxy", env["STOCKSTREAMER_LOAD_BALANCER_NETWORKS"]
        )
    )
    assert (
        web["dashboard"]["environment"]["STOCKSTREAMER_TRUSTED_PROXIES"]
        == (env["STOCKSTREAMER_LOAD_BALANCER_NETWORKS"])
    )
    with pytest.raises(MissingVariable):
        interpolate_all(load_yaml(WEB_OVERRIDE), {})
    # With RDS the migrations wait for the secrets one-shot themselves (no postgres in between).
    rds = load_yaml(RDS_OVERRIDE)["services"]
    assert rds["migrate"]["depends_on"] == {
        "secrets": {"condition": "service_completed_successfully"}
    }


def compose_config(tmp_path: Path, files: str, *services: str, **env: str) -> dict[str, Any]:
    """Compose's own model (`docker compose config`, no engine needed) of what `up SERVICES`
    starts with COMPOSE_FILE=files: the services named and those they depend on."""
    docker = require_tool("docker", package="docker.io")
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    result = subprocess.run(  # noqa: S603
        [docker, "compose", "--env-file", str(env_file), "config", "--format", "json", *services],
        cwd=ROOT,
        # Nothing of this environment's own STOCKSTREAMER_* settings; HOME finds the compose plugin.
        env={"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "COMPOSE_FILE": files},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def test_each_instance_role_starts_its_own_services(tmp_path: Path) -> None:
    """What Terraform's instances run, merged by Compose itself: the scale-out mode's singleton
    (`up fetcher alerts`) those two and the one-shots before them, secrets first; an API instance
    (`up api dashboard`) those two and the secrets one-shot alone, published for the load
    balancer."""
    rds = {
        "STOCKSTREAMER_RDS_ADDRESS": "db.example",
        "STOCKSTREAMER_RDS_CA_FILE": str(tmp_path / "ca.pem"),
        "STOCKSTREAMER_SECRETS_DIR": str(tmp_path / "secrets"),
    }
    singleton = compose_config(
        tmp_path,
        "docker-compose.yml:deploy/compose.server.yaml:deploy/compose.rds.yaml",
        "fetcher",
        "alerts",
        STOCKSTREAMER_PGDATA_DIR=str(tmp_path / "pgdata"),
        **rds,
    )["services"]
    assert set(singleton) == {"secrets", "migrate", "db-users", "fetcher", "alerts"}
    assert set(singleton["migrate"]["depends_on"]) == {"secrets"}
    web = compose_config(
        tmp_path,
        "docker-compose.yml:deploy/compose.rds.yaml:deploy/compose.web.yaml",
        "api",
        "dashboard",
        STOCKSTREAMER_LOAD_BALANCER_NETWORKS="172.31.0.0/20",
        **rds,
    )["services"]
    assert set(web) == {"secrets", "api", "dashboard"}
    assert set(web["api"]["depends_on"]) == {"secrets"}
    for name, port in (("api", 8000), ("dashboard", 5006)):
        (published,) = web[name]["ports"]
        assert (published["target"], int(published["published"])) == (port, port), name
        assert published.get("host_ip") in (None, "", "0.0.0.0"), "every interface"  # noqa: S104
    assert web["api"]["environment"]["STOCKSTREAMER_TRUSTED_PROXIES"] == "172.31.0.0/20,dashboard"


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
