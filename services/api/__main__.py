"""Run the API: `python -m services.api` (settings from env and `.env`)."""

from __future__ import annotations

import sys

from services.api import workers
from services.api.config import ApiSettings
from services.common.config import load_settings
from services.common.logging import setup_logging


def main() -> int:
    settings = load_settings(ApiSettings, "api")
    setup_logging(settings.log_level, settings.log_format)
    return workers.run(settings)


if __name__ == "__main__":
    sys.exit(main())
