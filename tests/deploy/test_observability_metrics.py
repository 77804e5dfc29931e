"""The running services export what the Grafana dashboard and the alert rules query."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from playwright.sync_api import sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from services.runner.embedded_db import free_port
from services.runner.processes import ServiceProcess
from tests.deploy.observability import (
    PROMETHEUS_OWN,
    alert_rules,
    dashboard,
    dashboard_exprs,
    exported_names,
    metric_names,
)
from tests.e2e.conftest import CHROMIUM, require_chromium
from tests.utils.postgres import TEMPLATE, create_database, drop_database
from tests.utils.tools import require_tool


@dataclass
class Running:
    fetcher: str
    api: str
    dashboard: str
    exporter: str
    alerts: str

    def scrape(self, base: str) -> str:
        response = httpx.get(f"{base}/metrics", timeout=10)
        response.raise_for_status()
        return response.text

    def sample(self, base: str, name: str) -> float:
        for family in text_string_to_metric_families(self.scrape(base)):
            for sample in family.samples:
                if sample.name == name and not sample.labels:
                    return float(sample.value)
        raise AssertionError(f"{base} exports no {name}")


@pytest.fixture(scope="module")
def running(pg_admin_url: str, template_url: str) -> Iterator[Running]:
    """Fetcher (simulated market), API, dashboard, alerts service and postgres_exporter as real
    processes."""
    exporter_bin = require_tool(
        "postgres_exporter", "prometheus-postgres-exporter", package="prometheus-postgres-exporter"
    )
    url = asyncio.run(create_database(pg_admin_url, template=TEMPLATE))
    ports = {name: free_port() for name in ("fetcher", "api", "dashboard", "exporter", "alerts")}
    api = f"http://127.0.0.1:{ports['api']}"
    procs = [
        ServiceProcess(
            "services.fetcher",
            {
                "DATABASE_URL": url,
                "STOCKSTREAMER_PRICE_INTERVAL": "0.25",
                "STOCKSTREAMER_BACKFILL": "1h",
                "STOCKSTREAMER_FETCHER_METRICS_PORT": str(ports["fetcher"]),
            },
        ),
        ServiceProcess(
            "services.api", {"DATABASE_URL": url, "STOCKSTREAMER_API_PORT": str(ports["api"])}
        ),
        ServiceProcess(
            "services.dashboard",
            {"STOCKSTREAMER_API_URL": api, "STOCKSTREAMER_DASHBOARD_PORT": str(ports["dashboard"])},
        ),
        ServiceProcess(
            "services.alerts",
            {"DATABASE_URL": url, "STOCKSTREAMER_ALERTS_PORT": str(ports["alerts"])},
        ),
    ]
    exporter = Exporter(exporter_bin, url, ports["exporter"])
    running = Running(
        f"http://127.0.0.1:{ports['fetcher']}",
        api,
        f"http://127.0.0.1:{ports['dashboard']}",
        f"http://127.0.0.1:{ports['exporter']}",
        f"http://127.0.0.1:{ports['alerts']}",
    )
    try:
        for proc, base in zip(
            procs, (running.fetcher, running.api, running.dashboard, running.alerts), strict=True
        ):
            proc.start()
            proc.wait_http(f"{base}/readyz")
        exporter.start()
        yield running
    finally:
        exporter.stop()
        for proc in reversed(procs):
            proc.__exit__()
        asyncio.run(drop_database(url))


class Exporter:
    """postgres_exporter (Debian's or upstream's binary) serving on a loopback port."""

    def __init__(self, binary: str, database_url: str, port: int) -> None:
        self.argv = [binary, f"--web.listen-address=127.0.0.1:{port}"]
        self.env = {"DATA_SOURCE_NAME": database_url, "PATH": os.environ.get("PATH", "")}
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.log = tempfile.TemporaryFile()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it reaches the database (pg_up 1)."""
        self.proc = subprocess.Popen(  # noqa: S603 - a binary found on PATH
            self.argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if "\npg_up 1" in httpx.get(self.url, timeout=5).text:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()
            time.sleep(0.2)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


def labelled(exposition: str, name: str) -> set[str]:
    """Label names the samples called `name` carry."""
    return {
        label
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name
        for label in sample.labels
    }


def test_dashboard_and_alerts_query_only_what_the_services_export(running: Running) -> None:
    pages = {
        base: running.scrape(base)
        for base in (
            running.fetcher,
            running.api,
            running.dashboard,
            running.exporter,
            running.alerts,
        )
    }
    exported = set().union(*map(exported_names, pages.values()))
    queries = [*dashboard_exprs(dashboard()).values(), *(r["expr"] for r in alert_rules())]
    referenced = set().union(*map(metric_names, queries))
    assert {"pg_up", "pg_database_size_bytes"} <= exported, "postgres_exporter's defaults"
    missing = referenced - exported - PROMETHEUS_OWN
    assert missing == set(), "queried, but no service exports it"

    # The panels group these by a label; the metric must carry it.
    page = "\n".join(pages.values())
    grouped = {
        "stockstreamer_fetcher_ticks_written_total": "symbol",
        "stockstreamer_api_request_seconds_count": "status",
        "pg_database_size_bytes": "datname",
    }
    lacking = {
        (name, label) for name, label in grouped.items() if label not in labelled(page, name)
    }
    assert lacking == set()


def test_lag_histograms_measure_live_ticks(running: Running) -> None:
    # A page drawn in a browser starts a session on the dashboard: it receives every live tick.
    # (A bare GET builds the page's document only: its session starts when the page connects.)
    require_chromium()
    push_count = "stockstreamer_dashboard_receipt_to_push_seconds_count"
    send_count = "stockstreamer_api_commit_to_send_seconds_count"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            browser.new_page().goto(f"{running.dashboard}/")
            deadline = time.monotonic() + 20
            while running.sample(running.dashboard, push_count) < 10:
                assert time.monotonic() < deadline, "the dashboard pushed no live tick to a session"
                time.sleep(0.25)
            assert running.sample(running.dashboard, "stockstreamer_dashboard_sessions") >= 1
        finally:
            browser.close()

    api_page = running.scrape(running.api)
    sent = next(
        s.value
        for f in text_string_to_metric_families(api_page)
        for s in f.samples
        if s.name == "stockstreamer_api_events_sent_total" and s.labels == {"event": "price"}
    )
    lag = {s.name: s.value for f in text_string_to_metric_families(api_page) for s in f.samples}
    # One observation per stream and batch of live prices sent (the dashboard's feed is the one
    # stream here, well below the sampling threshold), and a batch holds one price or more.
    assert 0 < lag[send_count] <= sent
    assert lag["stockstreamer_api_commit_to_send_seconds_sum"] / lag[send_count] < 0.5
    pushes = running.sample(running.dashboard, push_count)
    push_sum = running.sample(
        running.dashboard, "stockstreamer_dashboard_receipt_to_push_seconds_sum"
    )
    assert push_sum / pushes < 0.5
