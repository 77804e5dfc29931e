"""Start the database (embedded unless DATABASE_URL), migrate, then every service via honcho.

The embedded server asks every login for its password: the runner migrates and applies
db/users.sql as its superuser, then runs the fetcher, the API and the alerts service each as its
own login user. The API's write token is made on the first `run` (`.data/secrets/api-token`) and
handed to the API and the dashboard as a file; the banner shows it that once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from services.alerts.config import AlertsSettings
from services.api.config import ApiSettings
from services.common.config import load_settings
from services.common.db import redact_url
from services.common.migrations import migrate
from services.common.retention import RetentionSettings
from services.dashboard.config import DashboardSettings
from services.fetcher.config import FetcherSettings
from services.runner.database import Database, apply_owner_settings, embedded, psql
from services.runner.token import ensure_api_token

ROOT = Path(__file__).resolve().parents[2]


class RunnerSettings(RetentionSettings):
    """Settings of the local runner itself (it applies the retention as the database's owner)."""

    data_dir: Path = Field(Path(".data"), description="Where the embedded PostgreSQL keeps data.")
    embedded_pg_port: int = Field(54329, ge=1, le=65535, description="Embedded PostgreSQL port.")


@dataclass(frozen=True)
class Ports:
    """Where the services listen: their own settings say (the same env and `.env`)."""

    api: int
    dashboard: int
    fetcher_metrics: int
    alerts: int

    @classmethod
    def read(cls) -> Ports:
        return cls(
            load_settings(ApiSettings, "api").api_port,
            load_settings(DashboardSettings, "dashboard").dashboard_port,
            load_settings(FetcherSettings, "fetcher").fetcher_metrics_port,
            load_settings(AlertsSettings, "alerts").alerts_port,
        )


@dataclass(frozen=True)
class Token:
    """The API's write token file, and the token itself only on the start that made it."""

    file: Path
    new: str | None = None

    def shown(self) -> str:
        """Where the file is: relative to the repository when it is inside it."""
        return str(self.file.relative_to(ROOT) if self.file.is_relative_to(ROOT) else self.file)


def start_database(settings: RunnerSettings) -> Database:
    """DATABASE_URL's server as it is, or the embedded one, started."""
    if "database_url" in settings.model_fields_set:
        return Database(settings.database_url)
    database = embedded(ROOT / settings.data_dir, settings.embedded_pg_port)
    assert database.server is not None  # noqa: S101 - embedded() makes one
    print(f"starting embedded PostgreSQL (data in {settings.data_dir / 'postgres'})", flush=True)
    database.server.start()
    asyncio.run(database.server.create_database())
    return database


def banner(ports: Ports, url: str, api_workers: int = 1, token: Token | None = None) -> str:
    procfile = (ROOT / "Procfile").read_text()
    lines = ["", "stockstreamer is starting:", f"  database   {redact_url(url)}"]
    if "services.dashboard" in procfile:
        lines.append(f"  dashboard  http://localhost:{ports.dashboard}/")
    if "services.api" in procfile:
        processes = "1 process" if api_workers == 1 else f"{api_workers} worker processes"
        lines.append(f"  api        http://localhost:{ports.api}/docs  ({processes})")
    lines.append(f"  fetcher    http://localhost:{ports.fetcher_metrics}/metrics")
    if "services.alerts" in procfile:
        lines.append(f"  alerts     http://localhost:{ports.alerts}/metrics")
    if token is not None and token.new is not None:
        # The one place the token is ever printed: the start that made it.
        lines.append(f"  api token  {token.new}  (new: shown this once; kept in {token.shown()})")
    elif token is not None:
        lines.append(f"  api token  in {token.shown()}  (writes: Authorization: Bearer <token>)")
    lines += ["Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def exec_procfile(
    directory: Path, service_env: Mapping[str, Mapping[str, str]] | None = None
) -> Path:
    """The Procfile with `exec` before each command, so SIGTERM reaches the service, not a shell;
    a service in `service_env` gets those variables too (names and file paths, no secret)."""
    lines = []
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if not sep:
            continue
        own = (service_env or {}).get(name.strip(), {})
        if own:
            assigned = " ".join(f"{k}={shlex.quote(v)}" for k, v in own.items())
            command = f"env {assigned} {command.strip()}"
        lines.append(f"{name}: exec {command.strip()}")
    path = directory / "Procfile"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_services(ports: Ports, database: Database, token_file: Path | None = None) -> int:
    """Every Procfile service under honcho until Ctrl-C or SIGTERM."""
    # Procfile commands say `python`: make it this interpreter, wherever make was run from.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path}
    if database.login_urls:
        env.pop("DATABASE_URL", None)  # each service has its own URL file instead
    else:
        env["DATABASE_URL"] = database.url
    # The dashboard follows the API wherever STOCKSTREAMER_API_PORT moved it.
    env.setdefault("STOCKSTREAMER_API_URL", f"http://127.0.0.1:{ports.api}")
    service_env: dict[str, dict[str, str]] = {
        name: {"DATABASE_URL_FILE": str(url_file)} for name, url_file in database.login_urls.items()
    }
    api_given = load_settings(ApiSettings, "api").model_fields_set
    dashboard_given = load_settings(DashboardSettings, "dashboard").model_fields_set
    if token_file is not None:
        # The file, not the token: it is never on a command line or in an environment. Tokens
        # of your own (.env) are kept: the API takes both, the dashboard yours.
        if "api_tokens_file" not in api_given:
            service_env.setdefault("api", {})["STOCKSTREAMER_API_TOKENS_FILE"] = str(token_file)
        if not {"dashboard_api_token", "dashboard_api_token_file"} & dashboard_given:
            dashboard = service_env.setdefault("dashboard", {})
            dashboard["STOCKSTREAMER_DASHBOARD_API_TOKEN_FILE"] = str(token_file)
    if "trusted_proxies" not in api_given:
        # The dashboard asks the API on its viewers' behalf from loopback: the API counts each
        # viewer (the address the dashboard forwards) against the per-client limits, not the
        # dashboard as one client.
        service_env.setdefault("api", {})["STOCKSTREAMER_TRUSTED_PROXIES"] = "127.0.0.1"
    with tempfile.TemporaryDirectory(prefix="stockstreamer-") as tmp:
        procfile = exec_procfile(Path(tmp), service_env)
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
    settings = load_settings(RunnerSettings, "make run")
    database = start_database(settings)
    try:
        if args.command == "url":
            print(database.url)  # asked for: the superuser's URL, password included
            return 0
        if args.command == "psql":
            argv, env = psql(database.url)
            return subprocess.call(argv, env=env)  # noqa: S603
        print(migrate(database.url), end="", flush=True)
        try:
            print(apply_owner_settings(database, settings), end="", flush=True)
        except RuntimeError as exc:
            print(f"stockstreamer make run: {exc}", file=sys.stderr)
            return 1
        if args.command == "migrate":
            return 0
        ports = Ports.read()
        api = load_settings(ApiSettings, "api")
        if api.api_tokens_file is not None:
            token = Token(api.api_tokens_file)  # a file of yours (.env): used as it is
        else:
            token = Token(*ensure_api_token(ROOT / settings.data_dir / "secrets"))
        print(banner(ports, database.url, api.worker_count(), token), flush=True)
        return run_services(ports, database, token.file)
    finally:
        if database.server is not None and args.command not in ("url", "psql"):
            print("stopping embedded PostgreSQL", flush=True)
            database.server.stop()


if __name__ == "__main__":
    sys.exit(main())
