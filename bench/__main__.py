"""Run every benchmark module (`bench/bench_*.py`) against a throwaway embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import sys
import tempfile
from pathlib import Path

from services.common.migrations import migrate
from services.runner.embedded_db import EmbeddedPostgres, free_port


def main() -> int:
    only = sys.argv[1:]
    server = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="stockstreamer-bench-")) / "data", port=free_port()
    )
    server.start()
    try:
        print("| benchmark | baseline | stockstreamer | ratio |")
        print("|---|---|---|---|")
        package = Path(__file__).parent
        for info in pkgutil.iter_modules([str(package)]):
            if not info.name.startswith("bench_") or (only and info.name not in only):
                continue
            module = importlib.import_module(f"bench.{info.name}")
            # each benchmark gets a fresh database, so none sees another's rows
            url = asyncio.run(server.create_database(info.name))
            migrate(url)
            for row in module.run(url):
                print(row, flush=True)
    finally:
        server.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
