"""Lean SSE clients for the capacity run: thousands of streams per process, counting price events.

    python -m bench.capacity.streams BASE_URL CLIENTS [--source 127.0.0.1] [--probe]

Each stream is a raw asyncio protocol (no HTTP client library, no per-event objects): it sends
one `GET /api/v1/stream`, de-chunks the body and reads only what it needs from each frame — the
`id:` of price events — to count the events inside a window of ids and to check that they come
in order. A stream that fails to open (503/429 with Retry-After, a refused connection) is retried
until it opens; once open it is never reopened, so a cut stream stays counted as cut.

With `--probe` (one client, normally subscribed after all the others) the process also holds a
LISTEN connection on PostgreSQL's `prices` channel (DATABASE_URL from the environment); a
notification, sent on commit, carries the highest event id of the commit. Commit-to-receipt of
that id is the time from the notification's arrival to the probe reading the event, both on this
process's clock.

Talks to its parent over stdin/stdout, one JSON object per line out, one command per line in:

    out  {"opening": n, ...} every few seconds while the streams open
    out  {"open": n, ...}    once every stream is open (HTTP 200, headers read) or time ran out
    in   start F             count price events with id > F ...
    in   stop E              ... up to E included; once every stream has read an id >= E (or 30 s
                             pass) the report is printed. F and E must be ahead of every stream
                             when they arrive (a stream already past them is counted as `late`),
                             so the parent chooses ids a few commits in the future.
    in   report              print the report now
    in   close (or EOF)      close every stream and exit

The platform must allow the open files: one per stream plus a few, within the hard
RLIMIT_NOFILE (`ulimit -Hn`; the soft limit is raised to it here), and one local port per stream:
every stream from one source address to one server port needs an ephemeral port
(`/proc/sys/net/ipv4/ip_local_port_range`, 32768-60999 by default: about 28,000).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import resource
import sys
import time
from collections import Counter
from typing import Any, cast
from urllib.parse import urlsplit

NEVER = 2**63  # an id no stream reaches: counting is off until `start`
OPEN_RETRY_CAP = 5.0  # longest wait honoured from a Retry-After while opening
OPEN_WAIT = 30.0  # seconds for the response's head before an opening is given up and retried
OPEN_GATE = 32  # openings in flight per process
PROGRESS_EVERY = 5.0  # seconds between two progress messages while opening
FRAME_END = b"\n\n"
PRICE = b"event: price"


def raise_open_files(need: int) -> int:
    """Lift the soft open-file limit to the hard one; exit naming the limit if `need` won't fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        raise SystemExit(
            f"open-file limit {hard} is below the {need} this process needs; "
            "raise the hard limit (ulimit -Hn, /etc/security/limits.conf, or docker --ulimit)"
        )
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return int(hard)


class Run:
    """What every stream of this process shares: the window of ids to count, and the tallies."""

    def __init__(self, host: str, port: int, probe: bool) -> None:
        self.request = (
            f"GET /api/v1/stream HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Accept: text/event-stream\r\nUser-Agent: stockstreamer-capacity\r\n\r\n"
        ).encode()
        self.start = NEVER
        self.end = NEVER
        self.counting = False  # after `start`: a stream ending now is a cut inside the window
        self.refused: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.opened = 0
        self.eof = 0  # open streams the server ended
        self.eof_in_window = 0
        self.probe = probe
        self.notified: dict[int, float] = {}  # probe: event id -> arrival of its NOTIFY
        self.seen: dict[int, float] = {}  # probe: ids read before their NOTIFY arrived
        self.lags: list[float] = []  # probe: commit-to-receipt, seconds, inside the window

    def notify(self, event_id: int) -> None:
        """The probe's LISTEN connection saw a commit whose highest id is `event_id`."""
        now = time.monotonic()
        read = self.seen.pop(event_id, None)
        if read is not None:  # the stream was quicker than the notification: no lag to speak of
            if self.start < event_id <= self.end:
                self.lags.append(max(0.0, read - now))
        else:
            self.notified[event_id] = now

    def received(self, event_id: int) -> None:
        """The probe read the price event `event_id`."""
        now = time.monotonic()
        sent = self.notified.pop(event_id, None)
        if sent is None:
            self.seen[event_id] = now  # a commit's lower ids never match: trimmed below
            if len(self.seen) > 10_000:
                for old in sorted(self.seen)[:5_000]:
                    del self.seen[old]
        elif self.start < event_id <= self.end:
            self.lags.append(now - sent)


class Stream(asyncio.Protocol):
    """One SSE connection: HTTP head, then chunked body, then frames; counts price events."""

    __slots__ = (
        "run",
        "transport",
        "head",
        "opened",
        "status",
        "retry_after",
        "chunked",
        "left",
        "skip",
        "size_line",
        "tail",
        "count",
        "last",
        "disorder",
        "ended",
        "closing",
    )

    def __init__(self, run: Run, opened: asyncio.Future[int]) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.head: bytes | None = b""  # None once the response head is read
        self.opened = opened
        self.status = 0
        self.retry_after = 1.0
        self.chunked = False
        self.left = 0  # bytes of the current chunk still to come
        self.skip = 0  # bytes of a chunk's trailing CRLF still to skip
        self.size_line = b""
        self.tail = b""  # an incomplete frame
        self.count = 0  # price events inside the window
        self.last = 0  # the highest price event id read
        self.disorder = 0  # price events whose id was not above the previous one
        self.ended = False
        self.closing = False  # closed by us: not a cut

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        if self.head is not None:
            head = self.head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self.head = head
                return
            self.head = None
            self._response(head[:end].decode("latin-1"))
            if self.status != 200:
                self.close()
                return
            data = head[end + 4 :]
        if self.chunked:
            data = self._dechunk(data)
        if data:
            self._frames(data)

    def _response(self, head: str) -> None:
        lines = head.split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "transfer-encoding" and "chunked" in value.lower():
                self.chunked = True
            elif name == "retry-after" and value.isdigit():
                self.retry_after = float(value)
        if not self.opened.done():
            self.opened.set_result(self.status)

    def _dechunk(self, data: bytes) -> bytes:
        out: list[bytes] = []
        i, n = 0, len(data)
        while i < n:
            if self.left:
                take = min(self.left, n - i)
                out.append(data[i : i + take])
                i += take
                self.left -= take
                if not self.left:
                    self.skip = 2  # the CRLF that ends the chunk's data
            elif self.skip:
                take = min(self.skip, n - i)
                i += take
                self.skip -= take
            else:
                nl = data.find(b"\n", i)
                if nl < 0:
                    self.size_line += data[i:]
                    break
                line, self.size_line = self.size_line + data[i:nl], b""
                i = nl + 1
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if not size:  # the last chunk: the server ended the stream
                    self.close(by_server=True)
                    break
                self.left = size
        return b"".join(out)

    def _frames(self, data: bytes) -> None:
        if self.tail:
            data = self.tail + data
        end = data.rfind(FRAME_END)
        if end < 0:
            self.tail = data
            return
        self.tail = data[end + 2 :]
        run = self.run
        for frame in data[:end].split(FRAME_END):
            # price events are the frames with an id and `event: price` (a reset has an id too)
            if not frame.startswith(b"id: "):
                continue
            nl = frame.find(b"\n")
            if frame.find(PRICE, nl) != nl + 1:
                continue
            event_id = int(frame[4:nl])
            if event_id <= self.last:
                self.disorder += 1
            self.last = event_id
            if run.start < event_id <= run.end:
                self.count += 1
            if run.probe:
                run.received(event_id)

    def close(self, by_server: bool = False) -> None:
        if by_server:
            self._ended()
        if self.transport is not None:
            self.transport.close()

    def _ended(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.status == 200 and not self.closing:
            self.run.eof += 1
            if self.run.counting:
                self.run.eof_in_window += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionResetError("closed before the response"))
        self._ended()


def _same(stream: Stream) -> Stream:
    return stream


async def open_stream(
    run: Run, host: str, port: int, source: str, gate: asyncio.Semaphore, deadline: float
) -> Stream | None:
    """One stream, retried until it opens (honouring Retry-After) or the deadline passes."""
    loop = asyncio.get_running_loop()
    while True:
        async with gate:
            if time.monotonic() >= deadline:
                return None
            opened: asyncio.Future[int] = loop.create_future()
            stream = Stream(run, opened)
            try:
                await loop.create_connection(
                    functools.partial(_same, stream), host, port, local_addr=(source, 0)
                )
                status = await asyncio.wait_for(opened, OPEN_WAIT)
            except (OSError, TimeoutError) as exc:
                stream.closing = True  # never counted: it did not open
                stream.close()
                run.errors[f"opening: {type(exc).__name__}"] += 1
                await asyncio.sleep(1.0)
                continue
        if status == 200:
            run.opened += 1
            return stream
        run.refused[str(status)] += 1
        await asyncio.sleep(min(max(stream.retry_after, 0.2), OPEN_RETRY_CAP))


async def listen(run: Run) -> Any:
    """The probe's own LISTEN connection on `prices` (payload: the commit's highest event id)."""
    import asyncpg  # only the probe needs it

    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    await conn.add_listener("prices", lambda _c, _pid, _ch, payload: run.notify(int(payload)))
    return conn


def report(run: Run, streams: list[Stream], wanted: int) -> dict[str, Any]:
    live = [s for s in streams if not s.ended]
    lasts = [s.last for s in streams]
    out: dict[str, Any] = {
        "wanted": wanted,
        "open": len(streams),
        "live": len(live),
        "counts": {str(k): v for k, v in Counter(s.count for s in streams).items()},
        "behind": sum(s.last < run.end for s in live) if run.end != NEVER else 0,
        "last": [min(lasts, default=0), max(lasts, default=0)],
        "eof": run.eof,
        "eof_in_window": run.eof_in_window,
        "disorder": sum(s.disorder for s in streams),
        "refused": dict(run.refused),
        "errors": dict(run.errors),
    }
    if run.probe:
        out["lags_ms"] = sorted(round(lag * 1000, 2) for lag in run.lags)
    return out


def emit(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


async def main(base: str, clients: int, source: str, probe: bool, open_timeout: float) -> None:
    split = urlsplit(base)
    host, port = split.hostname or "127.0.0.1", split.port or 80
    run = Run(host, port, probe)
    conn = await listen(run) if probe else None
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)

    began = time.monotonic()
    # A few opening at a time per process: a burst of thousands of connects would overflow the
    # server's accept backlog and measure SYN retries instead of the API.
    gate = asyncio.Semaphore(OPEN_GATE)
    deadline = began + open_timeout

    async def progress() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            emit({"opening": run.opened, "refused": dict(run.refused), "errors": dict(run.errors)})

    ticker = asyncio.create_task(progress())
    opened = await asyncio.gather(
        *(open_stream(run, host, port, source, gate, deadline) for _ in range(clients))
    )
    ticker.cancel()
    streams = [s for s in opened if s is not None]
    emit({"open": len(streams), "seconds": round(time.monotonic() - began, 2)})

    try:
        while line := (await commands.readline()).decode().strip():
            verb, _, arg = line.partition(" ")
            if verb == "start":
                run.start, run.counting = int(arg), True
                late = sum(s.last > run.start for s in streams)
                for s in streams:
                    s.count = 0
                if late:
                    run.errors["late start"] += late
            elif verb == "stop":
                run.end = int(arg)
                late = sum(s.last > run.end for s in streams)
                if late:
                    run.errors["late stop"] += late
                until = time.monotonic() + 30
                while time.monotonic() < until and any(
                    s.last < run.end for s in streams if not s.ended
                ):
                    await asyncio.sleep(0.1)
                run.counting = False
                emit(report(run, streams, clients))
            elif verb == "report":
                emit(report(run, streams, clients))
            elif verb == "close":
                break
    finally:
        for s in streams:
            s.closing = True
            s.close()
        if conn is not None:
            await conn.close()
        await asyncio.sleep(0)  # let the transports close


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("base", help="the API's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("clients", type=int)
    parser.add_argument("--source", default="127.0.0.1", help="local address to connect from")
    parser.add_argument("--probe", action="store_true", help="also LISTEN on prices (DATABASE_URL)")
    parser.add_argument("--open-timeout", type=float, default=300.0)
    args = parser.parse_args()
    raise_open_files(args.clients + 64)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a project dependency
        runner = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(main(args.base, args.clients, args.source, args.probe, args.open_timeout))


if __name__ == "__main__":
    cli()
