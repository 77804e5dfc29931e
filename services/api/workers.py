"""The API on every core: one process, or a supervisor and a worker process per CPU.

With api_workers above 1 the supervisor imports the application's modules, then forks the
workers, which share those pages copy-on-write. Each worker binds its own listening socket to the
one host and port with SO_REUSEPORT, so the kernel spreads new connections evenly over them (one
shared socket would let whichever worker is least busy accept most of them). Each has its own
event loop, database pool, LISTEN connection and share of the caps (ApiSettings.worker_share);
their metrics add up in prometheus_client's multiprocess files (services/api/metrics.py).

The supervisor starts no event loop or thread: it waits for signals. SIGTERM or SIGINT go on to
every worker as SIGTERM, each shuts down gracefully, and one that has not within the shutdown
timeout and a margin is killed. A worker that dies otherwise is started again, after a back-off
that grows while workers keep dying young.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from services.api.config import ApiSettings

if TYPE_CHECKING:
    from prometheus_client import Counter

log = logging.getLogger(__name__)

# Open files a process needs beyond one per connection and pooled connection: the listening
# socket, the LISTEN connection, the event loop's own, the metrics files, logs, libraries.
OPEN_FILES_MARGIN = 64
# What a worker gets beyond api_shutdown_timeout to close its pool and listener before it is
# killed (compose's stop_grace_period leaves room for both).
SHUTDOWN_MARGIN = 5.0
RESTART_BACKOFF = (0.5, 30.0)  # seconds before the first restart, and the most
STABLE_SECONDS = 30.0  # a worker that lived this long died by accident, not from its start
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
_PR_SET_PDEATHSIG = 1


def run(settings: ApiSettings) -> int:
    """Serve the API as settings say: one process, or a supervisor and its workers."""
    workers = settings.worker_count()
    if workers == 1:
        return serve(settings.worker_share(1))
    return Supervisor(settings, workers).run()


def serve(
    settings: ApiSettings, worker: int | None = None, sock: socket.socket | None = None
) -> int:
    """One API process until SIGTERM or SIGINT: alone, or worker `worker` on its socket `sock`."""
    import uvicorn  # imported once the metrics mode is set (Supervisor._run)

    from services.api.app import create_app
    from services.api.server import ApiServer

    raise_open_file_limit(settings)
    config = uvicorn.Config(
        create_app(settings, worker),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,  # keep our structured logging
        access_log=False,
        proxy_headers=False,
        # the C event loop and HTTP parser: less CPU per request than the pure-Python ones
        loop="uvloop",
        http="httptools",
        # a flood of connections gets quick 503s instead of slowing everyone down
        limit_concurrency=settings.api_limit_concurrency,
        timeout_graceful_shutdown=int(settings.api_shutdown_timeout) or 1,
        timeout_keep_alive=max(1, round(settings.api_keep_alive)),
    )
    # uvicorn re-raises the signal it shut down for once it is done; by then the shutdown was
    # graceful, so the process ends with 0 like the other services rather than dying by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    ApiServer(config).run(sockets=None if sock is None else [sock])
    return 0


def raise_open_file_limit(settings: ApiSettings) -> None:
    """Raise the soft open-file limit toward what this process may need, as far as the hard
    limit allows; say so, once, when that is not enough."""
    needed = settings.api_limit_concurrency + settings.api_pool_size + OPEN_FILES_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):  # e.g. macOS caps it below the hard limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < needed:
        streams = settings.api_max_streams
        log.warning(
            "open-file limit %d is below the %d this process may need for its %d streams; "
            "raise it: ulimit -n / compose `ulimits`",
            soft,
            needed,
            streams,
        )


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def shared_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT: others of this user may bind there too."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """The workers' address, bound (not listening) by the supervisor for as long as it runs.

    Port 0 becomes a free port the workers then join. A fixed port is first bound without
    SO_REUSEPORT, so that a port some other process (another API among them) listens on is
    refused here rather than shared with it.
    """
    if port:
        with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    return shared_socket(host, port)


@dataclass
class _Slot:
    """One worker index: its process now, and how it has fared."""

    index: int
    pid: int | None = None
    started: float = 0.0
    failures: int = 0  # deaths in a row, each soon after its start
    due: float | None = None  # when to start it again


@dataclass
class Supervisor:
    """Forks `workers` API processes and keeps them running until SIGTERM or SIGINT."""

    settings: ApiSettings
    workers: int
    slots: list[_Slot] = field(init=False)
    restarts: Counter | None = field(init=False, default=None)
    _metrics_dir: str = field(init=False, default="")
    _reservation: socket.socket | None = field(init=False, default=None)
    _pid: int = field(init=False, default=0)
    share: ApiSettings = field(init=False)  # each worker's settings, once the port is known

    def __post_init__(self) -> None:
        self.slots = [_Slot(i) for i in range(self.workers)]

    def run(self) -> int:
        self._pid = os.getpid()
        # A signal from now on waits for the loop below (which stops the workers once started);
        # the workers take them again.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        gc.disable()  # until the fork: no collection leaves holes in pages the workers share
        self._metrics_dir = tempfile.mkdtemp(prefix="stockstreamer-api-metrics-")
        try:
            return self._run()
        finally:
            if self._reservation is not None:
                self._reservation.close()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)

    def _run(self) -> int:
        # prometheus_client decides at its import how values are kept: in files shared by the
        # workers only if this is set by then.
        if "prometheus_client" in sys.modules:
            raise RuntimeError("prometheus_client was imported before its multiprocess directory")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        settings = self.settings
        try:
            self._reservation = reserve_port(settings.api_host, settings.api_port)
        except OSError as exc:
            address = f"{settings.api_host}:{settings.api_port}"
            log.error("cannot listen on %s: %s", address, exc.strerror)
            return 1
        port = int(self._reservation.getsockname()[1])
        self.share = settings.worker_share(self.workers).model_copy(update={"api_port": port})

        # Everything the workers run, imported once here and shared copy-on-write.
        import uvicorn.protocols.http.httptools_impl  # noqa: F401
        import uvloop  # noqa: F401
        from prometheus_client import CollectorRegistry

        import services.api.app  # noqa: F401
        import services.api.server  # noqa: F401
        from services.api.metrics import worker_restarts

        self.restarts = worker_restarts(CollectorRegistry())
        self.restarts.inc(0)  # the supervisor's file exists before a worker scrapes it
        if threading.active_count() != 1:
            raise RuntimeError("a thread started before the workers were forked")
        log.info(
            "api starting workers",
            extra={
                "workers": self.workers,
                "address": f"{settings.api_host}:{port}",
                "pid": os.getpid(),
                "max_streams_per_worker": self.share.api_max_streams,
                "pool_size_per_worker": self.share.api_pool_size,
            },
        )
        # Measured with two workers, idle: 130 MiB PSS for the three processes with the freeze,
        # 146 without (a collection in a worker would write to every object's header).
        gc.freeze()
        for slot in self.slots:
            self._spawn(slot)
        gc.enable()
        return self._supervise()

    def _supervise(self) -> int:
        stopping: float | None = None
        killed = False
        deadline = self.settings.api_shutdown_timeout + SHUTDOWN_MARGIN
        while True:
            now = time.monotonic()
            waits = [s.due - now for s in self.slots if s.due is not None and stopping is None]
            if stopping is not None:
                waits.append(stopping + deadline - now)
            timeout = max(0.0, min(waits, default=1.0))
            info = signal.sigtimedwait(_SIGNALS, timeout)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                if stopping is None:
                    stopping = time.monotonic()
                    log.info("api stopping", extra={"signal": signal.strsignal(info.si_signo)})
                    for slot in self.slots:
                        slot.due = None
                self._signal_all(signal.SIGTERM)
            self._reap(stopping is not None)
            running = [s for s in self.slots if s.pid is not None]
            if stopping is not None:
                if not running:
                    log.info("api stopped", extra={"workers": self.workers})
                    return 1 if killed else 0
                if time.monotonic() >= stopping + deadline and not killed:
                    log.error(
                        "api workers still running after the shutdown timeout: killed",
                        extra={"pids": [s.pid for s in running]},
                    )
                    self._signal_all(signal.SIGKILL)
                    killed = True
                continue
            for slot in self.slots:
                if slot.due is not None and slot.due <= time.monotonic():
                    slot.due = None
                    assert self.restarts is not None  # noqa: S101 - set in _run
                    self.restarts.inc()
                    gc.freeze()  # what the supervisor made since: shared too
                    self._spawn(slot)

    def _signal_all(self, sig: int) -> None:
        for slot in self.slots:
            if slot.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, sig)

    def _reap(self, stopping: bool) -> None:
        """Collect every worker that ended; plan a restart for each unless stopping."""
        from prometheus_client import multiprocess  # imported in _run already

        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = None
            multiprocess.mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]
            code = os.waitstatus_to_exitcode(status)
            how = f"signal {signal.strsignal(-code)}" if code < 0 else f"exit code {code}"
            if stopping:
                level = logging.INFO if code == 0 else logging.WARNING
                log.log(level, "api worker stopped", extra={"worker": slot.index, "pid": pid})
                continue
            lived = time.monotonic() - slot.started
            slot.failures = 1 if lived >= STABLE_SECONDS else slot.failures + 1
            first, most = RESTART_BACKOFF
            delay = min(most, first * 2 ** (slot.failures - 1))
            slot.due = time.monotonic() + delay
            log.error(
                "api worker %d died (%s); starting it again in %g s",
                slot.index,
                how,
                delay,
                extra={"worker": slot.index, "pid": pid, "lived_seconds": round(lived, 1)},
            )

    def _spawn(self, slot: _Slot) -> None:
        assert self._reservation is not None  # noqa: S101 - bound in _run
        pid = os.fork()
        if pid:
            slot.pid, slot.started = pid, time.monotonic()
            return
        # The worker: never returns into the supervisor's loop.
        code = 1
        try:
            code = self._worker(slot.index)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("api worker failed", extra={"worker": slot.index})
        finally:
            logging.shutdown()
            os._exit(code)

    def _worker(self, index: int) -> int:
        assert self._reservation is not None  # noqa: S101 - bound in _run
        self._reservation.close()
        # Its own process group: a terminal's Ctrl-C reaches the supervisor, which passes it on
        # once (two signals would make uvicorn skip the graceful part).
        os.setpgid(0, 0)
        _die_with(self._pid)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        gc.enable()
        sock = shared_socket(self.share.api_host, self.share.api_port)
        return serve(self.share, index, sock)


def _die_with(parent: int) -> None:
    """Have the kernel send SIGTERM to this process when `parent` (its supervisor) dies (Linux),
    so that no worker outlives a supervisor that was killed."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
