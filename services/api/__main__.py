"""Run the API: `python -m services.api` (settings from env and `.env`)."""

from __future__ import annotations

import signal
import sys

import uvicorn

from services.api.app import create_app
from services.api.config import ApiSettings
from services.api.server import ApiServer
from services.common.config import load_settings
from services.common.logging import setup_logging


def main() -> int:
    settings = load_settings(ApiSettings, "api")
    setup_logging(settings.log_level, settings.log_format)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,  # keep our structured logging
        access_log=False,
        proxy_headers=False,
        # the C event loop and HTTP parser: less CPU per request than the pure-Python ones
        loop="uvloop",
        http="httptools",
        # a flood of connections gets quick 503s instead of slowing everyone down
        limit_concurrency=settings.api_limit_concurrency,
        timeout_graceful_shutdown=int(settings.api_shutdown_timeout) or 1,
    )
    # uvicorn re-raises the signal it shut down for once it is done; by then the shutdown was
    # graceful, so the process ends with 0 like the other services rather than dying by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    ApiServer(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
