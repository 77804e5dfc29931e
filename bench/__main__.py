"""Run every benchmark module (`bench/bench_*.py`) against a throwaway embedded PostgreSQL.

python -m bench                          # all of them, default scale (minutes)
python -m bench bench_history            # one of them
python -m bench --scale full bench_history   # the full data set (50 symbols x 30 days)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import pkgutil
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from services.common.migrations import migrate
from services.runner.embedded_db import EmbeddedPostgres, free_port


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--scale", choices=["default", "full"], default="default")
    parser.add_argument("only", nargs="*", help="benchmark modules to run (default: all)")
    args = parser.parse_args()
    server = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="stockstreamer-bench-")) / "data", port=free_port()
    )
    server.start()
    try:
        cores = len(os.sched_getaffinity(0))
        print(
            f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, {cores} cores, "
            f"scale {args.scale}\n"
        )
        print("| benchmark | baseline | stockstreamer | ratio |")
        print("|---|---|---|---|")
        package = Path(__file__).parent
        for info in pkgutil.iter_modules([str(package)]):
            if not info.name.startswith("bench_") or (args.only and info.name not in args.only):
                continue
            module = importlib.import_module(f"bench.{info.name}")
            # each benchmark gets a fresh database, so none sees another's rows
            url = asyncio.run(server.create_database(info.name))
            migrate(url)
            for row in module.run(url, args.scale):
                print(row, flush=True)
    finally:
        server.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
