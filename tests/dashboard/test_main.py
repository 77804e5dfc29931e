"""`python -m services.dashboard` as a real process: pages, health, metrics and SIGTERM."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from services.runner.embedded_db import free_port
from services.runner.processes import ROOT, ServiceProcess
from tests.dashboard.fake_api import FakeApi


def test_serves_the_page_health_and_metrics_then_stops_on_sigterm(fake_api: FakeApi) -> None:
    port = free_port()
    env = {"STOCKSTREAMER_API_URL": fake_api.url, "STOCKSTREAMER_DASHBOARD_PORT": str(port)}
    with ServiceProcess("services.dashboard", env) as dashboard:
        base = f"http://127.0.0.1:{port}"
        dashboard.wait_http(f"{base}/healthz")
        page = httpx.get(f"{base}/", timeout=10)
        assert page.status_code == 200
        assert "<title>stockstreamer · live stock prices</title>" in page.text
        dashboard.wait_http(f"{base}/readyz")
        deadline = time.monotonic() + 10
        while httpx.get(f"{base}/readyz", timeout=5).json()["feed"] != "live":
            assert time.monotonic() < deadline, "the feed never went live"
            time.sleep(0.05)
        assert httpx.get(f"{base}/", timeout=10).status_code == 200  # a second tab
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        assert "stockstreamer_dashboard_feed_live 1.0" in metrics
        # two page loads without a browser: two sessions kept a while, none showing live data
        assert "stockstreamer_dashboard_unused_sessions 2.0" in metrics
        assert "stockstreamer_dashboard_sessions 0.0" in metrics
        assert httpx.get(f"{base}/nope", timeout=5).status_code == 404
        for query, named in (
            ("window=2h", "window"),
            ("kind=zip", "kind"),
            ("kind=bars&interval=3m", "interval"),
        ):
            answer = httpx.get(f"{base}/export.csv?{query}", timeout=5)
            assert answer.status_code == 422 and named in answer.text, (query, answer.text)
        assert fake_api.stream_requests == [None]  # one stream for the process, not one per tab
        dashboard.signal()
        assert dashboard.wait(15) == 0
    assert "dashboard stopped" in dashboard.output


def test_invalid_settings_exit_with_a_message() -> None:
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "services.dashboard"],
        cwd=ROOT,
        env={"STOCKSTREAMER_DASHBOARD_WINDOW": "2h", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "dashboard_window" in result.stderr
