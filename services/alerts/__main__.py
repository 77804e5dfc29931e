"""Run the alerts service: `python -m services.alerts` (settings from env and `.env`)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from services.alerts.channels import ChannelsError, load_channels
from services.alerts.config import AlertsSettings
from services.alerts.metrics import AlertsMetrics
from services.alerts.service import AlertService
from services.common.config import load_settings
from services.common.logging import setup_logging
from services.common.metrics import start_metrics_server

log = logging.getLogger("services.alerts")


async def serve(settings: AlertsSettings, channels: dict[str, str]) -> int:
    """Run until SIGTERM or SIGINT: the batch under way is finished, then deliveries."""
    service = AlertService(settings, channels, AlertsMetrics())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    server = start_metrics_server(
        settings.alerts_port, settings.alerts_host, ready=lambda: service.connected
    )
    log.info(
        "metrics listening",
        extra={"url": f"http://{settings.alerts_host}:{server.server_address[1]}/metrics"},
    )
    try:
        return await service.run()
    finally:
        server.shutdown()


def main() -> int:
    settings = load_settings(AlertsSettings, "alerts")
    setup_logging(settings.log_level, settings.log_format)
    try:
        channels = load_channels(settings.alert_channels_file)
    except ChannelsError as exc:
        print(f"stockstreamer alerts: STOCKSTREAMER_ALERT_CHANNELS_FILE: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(settings, channels))


if __name__ == "__main__":
    sys.exit(main())
