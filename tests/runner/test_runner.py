"""`make run`'s runner: embedded PostgreSQL, migrations, every service, and a clean Ctrl-C."""

from __future__ import annotations

import signal
import socket
import tempfile
from pathlib import Path

import httpx

from services.runner.embedded_db import EmbeddedPostgres, free_port
from services.runner.processes import ServiceProcess
from tests.utils.waiting import eventually


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_run_starts_everything_and_ctrl_c_stops_everything() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="stockstreamer-run-"))
    ports = {name: free_port() for name in ("pg", "api", "dashboard", "metrics")}
    env = {
        "STOCKSTREAMER_DATA_DIR": str(data_dir),
        "STOCKSTREAMER_EMBEDDED_PG_PORT": str(ports["pg"]),
        "STOCKSTREAMER_API_PORT": str(ports["api"]),
        "STOCKSTREAMER_DASHBOARD_PORT": str(ports["dashboard"]),
        "STOCKSTREAMER_FETCHER_METRICS_PORT": str(ports["metrics"]),
    }
    runner = ServiceProcess("services.runner", env, name="runner").start()
    try:
        api = f"http://127.0.0.1:{ports['api']}"
        runner.wait_http(f"{api}/healthz", timeout=60)

        async def every_stock_has_a_price() -> bool:
            stocks = httpx.get(f"{api}/api/v1/stocks", timeout=5).json()
            return len(stocks) == 6 and all(s["last_price"] for s in stocks)

        await eventually(every_stock_has_a_price, timeout=15)
        runner.wait_http(f"http://127.0.0.1:{ports['dashboard']}/", timeout=30)
        runner.wait_http(f"http://127.0.0.1:{ports['metrics']}/metrics")
        # where each service listens is printed for the person who ran it
        for port in (ports["api"], ports["dashboard"], ports["metrics"]):
            assert f"localhost:{port}" in runner.output

        runner.signal(signal.SIGINT)
        assert runner.wait(30) == 0
    finally:
        runner.stop()
    assert not any(_listening(p) for p in ports.values()), runner.output
    assert not EmbeddedPostgres(data_dir / "postgres").is_running()
