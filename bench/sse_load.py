"""Many lean SSE clients in a process of their own: raw sockets that only count price events.

    python -m bench.sse_load BASE_URL CLIENTS OUT.json

Opens CLIENTS streams of /api/v1/stream, from 127.0.0.2, 127.0.0.3, ... in turn (each address is
a client of its own to the per-client limits), prints "ready" once all are open, and counts the
price events each receives until SIGTERM, printing the total so far every PROGRESS seconds; then
writes {"received": [...per stream...], "ended": streams the server closed} to OUT. A stream the
API refuses with 503 is tried again a second later, as EventSource would.

One selector loop over non-blocking sockets, no asyncio: a few microseconds per read, so that on a
machine it shares with the API the load generator takes little of the CPU being measured. It needs
an open file per stream: it raises its soft limit to the hard one (`ulimit -Hn`).
"""

from __future__ import annotations

import errno
import json
import resource
import selectors
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

PRICE = b"event: price\n"
ADDRESSES = 200  # client addresses taken in turn: 127.0.0.2 and up
# Streams being opened at once: a burst of thousands of connections overflows the API's accept
# queue (the kernel then resets some), where browsers arrive over time.
OPENING = 50
PROGRESS = 0.1  # seconds between two lines of the total received
RETRY = 1.0  # seconds before a stream refused with 503 is asked for again


class Stream:
    """One connection: its state, the bytes of its head, what it has counted."""

    __slots__ = ("index", "sock", "head", "tail", "open")

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index, self.sock = index, sock
        self.head, self.tail, self.open = b"", b"", False


class Load:
    """CLIENTS streams of one API, opened OPENING at a time, counting what they receive."""

    def __init__(self, host: str, port: int, clients: int) -> None:
        self.host, self.port = host, port
        self.request = f"GET /api/v1/stream HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        self.selector = selectors.DefaultSelector()
        self.waiting: deque[tuple[float, int]] = deque((0.0, i) for i in range(clients))
        self.received = [0] * clients
        self.opening = self.opened = self.ended = 0

    def _connect(self, index: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((f"127.0.0.{2 + index % ADDRESSES}", 0))
        code = sock.connect_ex((self.host, self.port))
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, f"connect: {errno.errorcode.get(code, code)}")
        self.selector.register(sock, selectors.EVENT_WRITE, Stream(index, sock))
        self.opening += 1

    def _close(self, stream: Stream) -> None:
        self.selector.unregister(stream.sock)
        stream.sock.close()

    def _count(self, stream: Stream, data: bytes) -> None:
        data = stream.tail + data
        self.received[stream.index] += data.count(PRICE)
        # an event split between two reads is found in the next; one wholly within the kept
        # tail cannot be, so nothing counts twice
        stream.tail = data[-(len(PRICE) - 1) :]

    def _ready(self, stream: Stream, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            code = stream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, f"connect: {errno.errorcode.get(code, code)}")
            stream.sock.send(self.request)
            self.selector.modify(stream.sock, selectors.EVENT_READ, stream)
            return
        data = stream.sock.recv(65536)
        if stream.open:
            if data:
                self._count(stream, data)
            else:
                self.ended += 1
                self._close(stream)
            return
        if not data:
            raise ConnectionError("the API closed a stream before answering")
        stream.head += data
        head, sep, body = stream.head.partition(b"\r\n\r\n")
        if not sep:
            return
        status = int(head.split(b" ", 2)[1])
        self.opening -= 1
        if status == 503:  # busy: come back, as EventSource does
            self._close(stream)
            self.waiting.append((time.monotonic() + RETRY, stream.index))
        elif status != 200:
            raise ConnectionError(f"stream refused: {head.decode(errors='replace')}")
        else:
            stream.open, stream.head = True, b""
            self.opened += 1
            self._count(stream, body)

    def poll(self, timeout: float) -> None:
        """Open what may be opened, then read whatever is ready within `timeout` seconds."""
        now = time.monotonic()
        while self.waiting and self.opening < OPENING and self.waiting[0][0] <= now:
            self._connect(self.waiting.popleft()[1])
        for key, mask in self.selector.select(timeout):
            self._ready(key.data, mask)


def main(base: str, clients: int, out: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda sig, _: stopping.append(sig))
    url = urlsplit(base)
    load = Load(url.hostname or "127.0.0.1", url.port or 80, clients)
    while load.opened < clients:
        load.poll(0.05)
    print("ready", flush=True)
    shown = time.monotonic()
    while not stopping:
        load.poll(PROGRESS / 2)
        if time.monotonic() - shown >= PROGRESS:
            print(sum(load.received), flush=True)
            shown = time.monotonic()
    out.write_text(json.dumps({"received": load.received, "ended": load.ended}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
