"""A stockstreamer service as a real subprocess, as `make run` runs it (for tests and bench)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """`python -m <module>` with the given environment; its output goes to a log file."""

    def __init__(
        self,
        module: str,
        env: Mapping[str, str],
        name: str | None = None,
        open_files: tuple[int, int] | None = None,
    ) -> None:
        self.module = module
        self.open_files = open_files  # (soft, hard) RLIMIT_NOFILE for the process, if given
        self.name = name or module.rsplit(".", 1)[-1]
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("STOCKSTREAMER_")},
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        fd, path = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)
        # The log lives as long as this object (failures quote it), not on in the temp dir.
        weakref.finalize(self, self.log_path.unlink, missing_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own module
                [sys.executable, "-m", self.module],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=None if self.open_files is None else self._limit_open_files,
            )
        return self

    def _limit_open_files(self) -> None:
        assert self.open_files is not None  # noqa: S101 - only used when given
        resource.setrlimit(resource.RLIMIT_NOFILE, self.open_files)

    @property
    def pid(self) -> int:
        return self._started().pid

    def children(self) -> list[int]:
        """The process's children now (an API's workers), from /proc."""
        return child_pids(self.pid)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 30.0, status: int = 200) -> None:
        """Wait until GET `url` answers `status`; fail with the service's output otherwise."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"{self.name} exited with {code}:\n{self.output}")
            try:
                response = httpx.get(url, timeout=2.0)
                if response.status_code == status:
                    return
                last = response.status_code
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: {url} not ready ({last!r}):\n{self.output}")

    def _started(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.proc

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self._started().send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        return self._started().wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            pass


def child_pids(pid: int) -> list[int]:
    """The pids of `pid`'s children now, from /proc (Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if ppid == pid:
            found.append(int(entry.name))
    return sorted(found)
