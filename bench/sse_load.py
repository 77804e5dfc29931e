"""Many lean SSE clients in a process of their own: raw sockets that only count price events.

    python -m bench.sse_load BASE_URL CLIENTS OUT.json

Opens CLIENTS streams of /api/v1/stream, from 127.0.0.2, 127.0.0.3, ... in turn (each address is
a client of its own to the per-client limits), prints "ready" once all are open, and counts the
price events each receives until SIGTERM; then writes {"received": [...per stream...], "ended":
streams the server closed} to OUT. A stream the API refuses (503) is retried after Retry-After.
It needs an open file per stream: it raises its soft limit to the hard one (`ulimit -Hn`).
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

PRICE = b"event: price\n"
ADDRESSES = 200  # client addresses taken in turn: 127.0.0.2 and up
# Streams being opened at once: a burst of thousands of connections overflows the API's accept
# queue (the kernel then resets some), where browsers arrive over time.
OPENING = 50


class Streams:
    """Counts of price events per stream, and how many streams are open or were ended."""

    def __init__(self, clients: int) -> None:
        self.received = [0] * clients
        self.opened = 0
        self.ended = 0


async def _open(
    host: str, port: int, index: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    local = f"127.0.0.{2 + index % ADDRESSES}"
    request = f"GET /api/v1/stream HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    while True:
        reader, writer = await asyncio.open_connection(host, port, local_addr=(local, 0))
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status == 200:
            return reader, writer
        writer.close()
        if status != 503:
            raise RuntimeError(f"stream refused: {head.decode(errors='replace')}")
        await asyncio.sleep(1)  # a busy API says Retry-After; EventSource comes back too


async def _stream(
    host: str, port: int, index: int, streams: Streams, opening: asyncio.Semaphore
) -> None:
    async with opening:
        reader, writer = await _open(host, port, index)
    streams.opened += 1
    tail = b""
    try:
        while chunk := await reader.read(65536):
            data = tail + chunk
            streams.received[index] += data.count(PRICE)
            # an event split between two reads is found in the next; one wholly within the
            # kept tail cannot be, so nothing counts twice
            tail = data[-(len(PRICE) - 1) :]
        streams.ended += 1
    finally:
        writer.close()


async def main(base: str, clients: int, out: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    url = urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    streams = Streams(clients)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    opening = asyncio.Semaphore(OPENING)
    tasks = [asyncio.create_task(_stream(host, port, i, streams, opening)) for i in range(clients)]
    while streams.opened < clients:
        failed = [t for t in tasks if t.done() and t.exception()]
        if failed:
            raise RuntimeError("a stream failed to open") from failed[0].exception()
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    out.write_text(json.dumps({"received": streams.received, "ended": streams.ended}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])))
