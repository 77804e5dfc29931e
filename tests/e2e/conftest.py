"""The whole stack as real processes: PostgreSQL, fetcher, API and dashboard on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.common.market import Market
from services.common.symbols import parse_symbols
from services.fetcher.config import DEFAULT_SYMBOLS
from services.runner.embedded_db import free_port
from services.runner.processes import ServiceProcess
from tests.dashboard.conftest import market_payload, ms, session_table, stock
from tests.dashboard.fake_api import FakeApi
from tests.utils.tools import missing

CHROMIUM = Path("/usr/bin/chromium")
# The stocks a default install shows, in the order the dashboard draws them (alphabetical).
SYMBOLS = sorted(parse_symbols(DEFAULT_SYMBOLS))


@dataclass
class Stack:
    database_url: str
    fetcher: ServiceProcess
    api: ServiceProcess
    dashboard: ServiceProcess
    api_port: int
    dashboard_port: int

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}/"

    def api_process(self) -> ServiceProcess:
        env = {"DATABASE_URL": self.database_url, "STOCKSTREAMER_API_PORT": str(self.api_port)}
        return ServiceProcess("services.api", env, name="api")

    def start_api(self) -> None:
        self.api = self.api_process().start()
        self.api.wait_http(f"http://127.0.0.1:{self.api_port}/readyz")


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    missing(f"{CHROMIUM} is missing (apt-get install chromium)")


@pytest.fixture
def stack(database_url: str) -> Iterator[Stack]:
    require_chromium()
    api_port, dashboard_port = free_port(), free_port()
    fetcher = ServiceProcess(
        "services.fetcher",
        {
            "DATABASE_URL": database_url,
            "STOCKSTREAMER_SYMBOLS": ",".join(SYMBOLS),
            "STOCKSTREAMER_PRICE_INTERVAL": "0.25",
            "STOCKSTREAMER_FETCHER_METRICS_PORT": "0",
            # the simulator's first-start history: a year (a minute apart over the last week)
            "STOCKSTREAMER_BACKFILL": "365d",
        },
    )
    dashboard = ServiceProcess(
        "services.dashboard",
        {
            "STOCKSTREAMER_API_URL": f"http://127.0.0.1:{api_port}",
            "STOCKSTREAMER_DASHBOARD_PORT": str(dashboard_port),
            # one point per second in the 1-hour window, so growth shows within seconds
            "STOCKSTREAMER_DASHBOARD_MAX_POINTS": "3600",
            "STOCKSTREAMER_DASHBOARD_RECONNECT_MAX": "1",
        },
    )
    stack = Stack(database_url, fetcher, None, dashboard, api_port, dashboard_port)  # type: ignore[arg-type]
    try:
        fetcher.start()
        stack.start_api()
        dashboard.start()
        dashboard.wait_http(f"{stack.dashboard_url}healthz")
        yield stack
    finally:
        for process in (dashboard, stack.api, fetcher):
            if process is not None:
                process.__exit__()


@dataclass
class VendorDashboard:
    """The dashboard as a process, fed by a stand-in API whose market is a closed exchange."""

    api: FakeApi
    dashboard: ServiceProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


def closed_market_api(now: datetime) -> FakeApi:
    """New York's real sessions of the last eight days, two stocks with a point every 5 minutes
    of them, and the market closed until its next open (the sources: alpaca, and a failover)."""
    spans = session_table("XNYS", now - timedelta(days=8), now)
    market = market_payload("XNYS", now)
    following = Market("XNYS").next_open(now)
    market.update(is_open=False, next_open=following and following.isoformat())
    api = FakeApi(
        stocks=[
            stock("AAPL", 270.0, source="alpaca", failover=False),
            stock("INTC", 38.0, source="finnhub", failover=True),
        ],
        market=market,
        sessions=spans,
    )
    # history inside the week the page asks for (the API never sends older points)
    week = ms(now - timedelta(days=7, minutes=-10))
    recent = [(max(a, week), b) for a, b in spans if b > week]
    for symbol, base in (("AAPL", 270.0), ("INTC", 38.0)):
        ts = [t for a, b in recent for t in range(a, b, 5 * 60_000)]
        price = [base * (1 + 0.01 * ((i % 40) - 20) / 20) for i in range(len(ts))]
        api.series[symbol] = {
            "symbol": symbol,
            "ts": ts,
            "price": price,
            "downsampled": False,
            "bucket_ms": None,
        }
    return api


@pytest.fixture
def vendor_dashboard() -> Iterator[VendorDashboard]:
    require_chromium()
    api = closed_market_api(datetime.now(UTC)).start()
    port = free_port()
    dashboard = ServiceProcess(
        "services.dashboard",
        {
            "STOCKSTREAMER_API_URL": api.url,
            "STOCKSTREAMER_DASHBOARD_PORT": str(port),
            "STOCKSTREAMER_DASHBOARD_WINDOW": "1w",
            "STOCKSTREAMER_DASHBOARD_MAX_POINTS": "3000",
            "STOCKSTREAMER_DASHBOARD_RECONNECT_MAX": "1",
        },
    )
    try:
        dashboard.start()
        dashboard.wait_http(f"http://127.0.0.1:{port}/healthz")
        yield VendorDashboard(api, dashboard, port)
    finally:
        dashboard.__exit__()
        api.stop()
