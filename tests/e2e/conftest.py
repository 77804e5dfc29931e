"""The whole stack as real processes: PostgreSQL, fetcher, API and dashboard on free ports."""

from __future__ import annotations

import asyncio
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from services.common.embedded_db import free_port
from tests.utils.processes import ServiceProcess

CHROMIUM = Path("/usr/bin/chromium")
SYMBOLS = ["AAPL", "GE", "INTC", "NVDA"]
LEVELS = {"AAPL": 270.0, "GE": 290.0, "INTC": 38.0, "NVDA": 185.0}  # the simulator's start levels
SEED_HOURS = 23
SEED_STEP = timedelta(minutes=2)


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


async def seed_history(url: str) -> None:
    """A day of earlier, backfilled ticks ending near the simulator's levels: a longer window
    then has more to show than a short one."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    steps = int(timedelta(hours=SEED_HOURS) / SEED_STEP)
    conn = await asyncpg.connect(url)
    try:
        await conn.executemany(
            "INSERT INTO stocks (symbol) VALUES ($1) ON CONFLICT DO NOTHING",
            [(s,) for s in SYMBOLS],
        )
        rows = []
        for symbol in SYMBOLS:
            price = LEVELS[symbol]
            for i in range(1, steps + 1):  # walk backwards from the level the live ticks start at
                rows.append((symbol, now - i * SEED_STEP, round(price, 2)))
                price *= math.exp(rng.gauss(0, 0.004))
        await conn.executemany(
            "INSERT INTO ticks (symbol, ts, price, backfilled) VALUES ($1, $2, $3, true)", rows
        )
    finally:
        await conn.close()


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def stack(database_url: str) -> Iterator[Stack]:
    require_chromium()
    asyncio.run(seed_history(database_url))
    api_port, dashboard_port = free_port(), free_port()
    fetcher = ServiceProcess(
        "services.fetcher",
        {
            "DATABASE_URL": database_url,
            "STOCKSTREAMER_SYMBOLS": ",".join(SYMBOLS),
            "STOCKSTREAMER_PRICE_INTERVAL": "0.25",
            "STOCKSTREAMER_FETCHER_METRICS_PORT": "0",
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
