"""The capacity run's load generators: lean SSE client processes and locust's REST users."""

from __future__ import annotations

import csv
import json
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.processes import cpu_seconds
from services.runner.processes import ROOT

LOAD_NICENESS = 10  # the stream clients' scheduling priority (0: the stack's)

HERE = Path(__file__).resolve().parent
VENV = ROOT / ".venv" / "capacity"
SYMBOLS = "GE,AMZN,NVDA,INTC,AAPL,NFLX"
SPAWN_RATE = 250  # REST users started per second
PROBE_SOURCE = "127.0.0.2"  # another client address: outside the load's per-client share


class NoAnswer(RuntimeError):
    """A load process said nothing in time."""


class Clients:
    """One process of lean SSE clients (bench/capacity/streams.py), driven over stdin/stdout.

    With `probe_url` it is the probe: one stream from PROBE_SOURCE, and a LISTEN connection.
    """

    def __init__(
        self,
        label: str,
        base: str,
        count: int,
        cpus: set[int] | None = None,
        probe_url: str | None = None,
    ) -> None:
        self.label = label
        self.count = count
        self.progress: dict[str, Any] = {"opening": 0, "refused": {}, "errors": {}}
        args = [sys.executable, "-m", "bench.capacity.streams", base, str(count)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSTREAMER_")}
        if probe_url:
            args += ["--probe", "--source", PROBE_SOURCE]
            env["DATABASE_URL"] = probe_url  # not on the command line: it may hold a password
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, text=True,
        )  # fmt: skip
        if cpus:
            os.sched_setaffinity(self.proc.pid, cpus)
        if not probe_url:
            # The load stands for viewers on other machines: sharing this one's cores, it runs
            # after the stack when both are ready (its own CPU is still reported). The probe,
            # which measures, keeps the normal priority.
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, LOAD_NICENESS)
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def expect(self, timeout: float) -> dict[str, Any]:
        """The process's next message but progress (kept in `progress`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise NoAnswer(f"{self.label}: no answer in {timeout:.0f} s") from None
            if not line:
                self.stderr.seek(0)
                err = self.stderr.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"{self.label} exited ({self.proc.wait()}):\n{err}")
            message = dict(json.loads(line))
            if "opening" not in message:
                return message
            self.progress = message

    def opened(self, timeout: float) -> dict[str, Any] | None:
        """Its message once every stream is open; None while they are still opening."""
        try:
            return self.expect(timeout)
        except NoAnswer:
            return None

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def close(self) -> int:
        """Close every stream and end the process; its exit code."""
        if self.proc.poll() is None:
            try:
                self.send("close")
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.reader.join(10)
        for pipe in (self.proc.stdin, self.proc.stdout, self.stderr):
            if pipe is not None:
                pipe.close()
        return self.proc.returncode


def ensure_locust() -> None:
    """Locust in its own venv: its pins (gevent, Flask, pytest) stay out of the project's."""
    lock = HERE / "requirements.lock"
    stamp = VENV / ".installed"
    if stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--disable-pip-version-check", "-r", str(lock)], check=True)
    stamp.touch()


class Locust:
    """One headless locust process of REST users for `seconds`; its CPU read before it is reaped."""

    def __init__(
        self, base: str, users: int, seconds: float, prefix: Path, cpus: set[int] | None
    ) -> None:
        self.prefix = prefix
        env = {
            "PATH": "/usr/bin:/bin",
            "CAPACITY_REST_RATE": "1.0",
            "CAPACITY_SYMBOLS": SYMBOLS,
            "CAPACITY_SUMMARY": f"{prefix}_summary.json",
        }
        args = [str(VENV / "bin" / "locust"), "-f", str(HERE / "locustfile.py"), "--headless"]
        args += ["--host", base, "--users", str(users), "--spawn-rate", str(SPAWN_RATE)]
        args += ["--run-time", f"{math.ceil(seconds)}s", "--reset-stats", "--csv", str(prefix)]
        args += ["--only-summary", "--stop-timeout", "5", "--loglevel", "WARNING", "RestUser"]
        self.log = Path(f"{prefix}.log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        if cpus:
            os.sched_setaffinity(self.proc.pid, cpus)  # before it starts its users

    def finish(self, timeout: float) -> float:
        """Wait for it to end; its CPU seconds (read from /proc while it is a zombie)."""
        deadline = time.monotonic() + timeout
        while not os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            if time.monotonic() > deadline:
                self.proc.kill()
            time.sleep(0.1)
        used = cpu_seconds(self.proc.pid)
        self.proc.wait()
        return used

    def results(self) -> tuple[list[dict[str, str]], dict[str, float], Counter[str], str]:
        """Per-endpoint rows, the REST summary, failures by error, and locust's CPU warnings."""
        with open(f"{self.prefix}_stats.csv", newline="") as f:
            stats = [r for r in csv.DictReader(f) if r["Name"] != "Aggregated"]
        failures: Counter[str] = Counter()
        with open(f"{self.prefix}_failures.csv", newline="") as f:
            for row in csv.DictReader(f):
                failures[row["Error"]] += int(row["Occurrences"])
        lines = self.log.read_text(errors="replace").splitlines()
        warned = "; ".join(sorted({ln.split(": ", 1)[-1] for ln in lines if "CPU usage" in ln}))
        summary = json.loads(Path(f"{self.prefix}_summary.json").read_text())
        return [r for r in stats if r["Request Count"] != "0"], summary, failures, warned
