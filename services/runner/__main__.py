"""Start the database (embedded unless DATABASE_URL), migrate, then every service via honcho."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from services.api.config import ApiSettings
from services.common.config import CommonSettings, load_settings
from services.common.db import redact_url
from services.common.migrations import migrate
from services.dashboard.config import DashboardSettings
from services.fetcher.config import FetcherSettings
from services.runner.embedded_db import EmbeddedPostgres, postgres_bin_dir

ROOT = Path(__file__).resolve().parents[2]


class RunnerSettings(CommonSettings):
    """Settings of the local runner itself."""

    data_dir: Path = Field(Path(".data"), description="Where the embedded PostgreSQL keeps data.")
    embedded_pg_port: int = Field(54329, ge=1, le=65535, description="Embedded PostgreSQL port.")


@dataclass(frozen=True)
class Ports:
    """Where the services listen: their own settings say (the same env and `.env`)."""

    api: int
    dashboard: int
    fetcher_metrics: int

    @classmethod
    def read(cls) -> Ports:
        return cls(
            load_settings(ApiSettings, "api").api_port,
            load_settings(DashboardSettings, "dashboard").dashboard_port,
            load_settings(FetcherSettings, "fetcher").fetcher_metrics_port,
        )


def start_database(settings: RunnerSettings) -> tuple[str, EmbeddedPostgres | None]:
    """The URL to use, and the embedded server when we started one."""
    if "database_url" in settings.model_fields_set:
        return settings.database_url, None
    pg = EmbeddedPostgres((ROOT / settings.data_dir / "postgres"), port=settings.embedded_pg_port)
    print(f"starting embedded PostgreSQL (data in {settings.data_dir / 'postgres'})", flush=True)
    pg.start()
    asyncio.run(pg.create_database())
    return pg.url, pg


def banner(ports: Ports, url: str) -> str:
    procfile = (ROOT / "Procfile").read_text()
    lines = ["", "stockstreamer is starting:", f"  database   {redact_url(url)}"]
    if "services.dashboard" in procfile:
        lines.append(f"  dashboard  http://localhost:{ports.dashboard}/")
    if "services.api" in procfile:
        lines.append(f"  api        http://localhost:{ports.api}/docs")
    lines.append(f"  fetcher    http://localhost:{ports.fetcher_metrics}/metrics")
    lines += ["Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def exec_procfile(directory: Path) -> Path:
    """The Procfile with `exec` before each command, so SIGTERM reaches the service, not a shell."""
    lines = []
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep:
            lines.append(f"{name}: exec {command.strip()}")
    path = directory / "Procfile"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_services(ports: Ports, url: str) -> int:
    """Every Procfile service under honcho until Ctrl-C or SIGTERM."""
    # Procfile commands say `python`: make it this interpreter, wherever make was run from.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "DATABASE_URL": url, "PATH": path}
    # The dashboard follows the API wherever STOCKSTREAMER_API_PORT moved it.
    env.setdefault("STOCKSTREAMER_API_URL", f"http://127.0.0.1:{ports.api}")
    with tempfile.TemporaryDirectory(prefix="stockstreamer-") as tmp:
        procfile = exec_procfile(Path(tmp))
        honcho = [sys.executable, "-m", "honcho", "start", "-f", str(procfile), "-d", str(ROOT)]
        proc = subprocess.Popen(honcho, cwd=ROOT, env=env)  # noqa: S603
        signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
        try:
            return proc.wait()
        except KeyboardInterrupt:
            # A terminal sends SIGINT to honcho too; from elsewhere it may not have had it.
            proc.send_signal(signal.SIGINT)
            proc.wait()
            return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m services.runner", description=__doc__)
    parser.add_argument(
        "command", choices=["run", "migrate", "url", "psql"], nargs="?", default="run"
    )
    args = parser.parse_args()
    settings = RunnerSettings()
    url, pg = start_database(settings)
    try:
        if args.command == "url":
            print(url)
            return 0
        if args.command == "psql":
            psql = postgres_bin_dir() / "psql"
            return subprocess.call([str(psql), url])  # noqa: S603
        print(migrate(url), end="", flush=True)
        if args.command == "migrate":
            return 0
        ports = Ports.read()
        print(banner(ports, url), flush=True)
        return run_services(ports, url)
    finally:
        if pg is not None and args.command not in ("url", "psql"):
            print("stopping embedded PostgreSQL", flush=True)
            pg.stop()


if __name__ == "__main__":
    sys.exit(main())
