"""The API as a real process for the benchmarks."""

from __future__ import annotations

import asyncio

from services.runner.embedded_db import free_port
from services.runner.processes import ServiceProcess


async def start_api(url: str, **settings: str) -> tuple[ServiceProcess, str]:
    """`python -m services.api` against `url` on a free port, once ready; and its base URL."""
    port = free_port()
    env = {
        "DATABASE_URL": url,
        "STOCKSTREAMER_API_PORT": str(port),
        "STOCKSTREAMER_LOG_LEVEL": "WARNING",
        **settings,
    }
    api = ServiceProcess("services.api", env).start()
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(api.wait_http, f"{base}/readyz")
    except BaseException:
        api.stop()
        raise
    return api, base
