"""Run the fetcher: `python -m services.fetcher` (settings from env and `.env`)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from services.common.config import load_settings
from services.common.logging import setup_logging
from services.common.metrics import start_metrics_server
from services.fetcher.config import FetcherSettings
from services.fetcher.metrics import FetcherMetrics
from services.fetcher.providers import create_providers
from services.fetcher.service import Fetcher

log = logging.getLogger("services.fetcher")


async def serve(settings: FetcherSettings) -> int:
    """Run until SIGTERM or SIGINT, then flush; the exit code (1: every provider refused us)."""
    chain, history = create_providers(settings)
    fetcher = Fetcher(settings, chain, FetcherMetrics(), history=history)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, fetcher.stop)
    server = start_metrics_server(
        settings.fetcher_metrics_port,
        settings.fetcher_metrics_host,
        ready=lambda: fetcher.writer.connected,
    )
    log.info(
        "metrics listening",
        extra={"url": f"http://{settings.fetcher_metrics_host}:{server.server_address[1]}/metrics"},
    )
    try:
        code = await fetcher.run()
    finally:
        server.shutdown()
    if code:
        print(
            "stockstreamer fetcher: every live provider refused its keys "
            f"({','.join(settings.provider)}); check them",
            file=sys.stderr,
        )
    return code


def main() -> int:
    settings = load_settings(FetcherSettings, "fetcher")
    setup_logging(settings.log_level, settings.log_format)
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
