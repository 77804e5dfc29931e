"""SSE clients in a process of their own, so that the API is measured, not the load generator.

    python -m bench.stream_clients BASE_URL CLIENTS EVENTS OUT.json [--record]

Opens CLIENTS streams (a few at a time, coming back after Retry-After when refused as a real
EventSource does), prints "ready" once all are open, reads until each has EVENTS `price` events
(or --within seconds pass), prints "done", writes {"received": [...per client...], "times":
{id: receipt time}} to OUT (receipt times, epoch seconds, of every price event of the first
client when --record is given), and closes its streams once standard input ends.

Each client is a bare asyncio connection that counts `price` events in the bytes it reads (no
HTTP library, no event objects): one process keeps up with thousands of streams on a small
machine. It needs one file descriptor per stream: the soft RLIMIT_NOFILE is raised to the hard
limit, which must exceed CLIENTS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

OPENING = 8  # streams being opened at once
PRICE = b"event: price\n"
PRICE_ID = re.compile(rb"id: (\d+)\nevent: price\n")


class Refused(Exception):
    """The API answered 429 or 503: come back after Retry-After."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after


class Client:
    """One stream: opened, then read until it has its events."""

    def __init__(self, host: str, port: int, record: dict[str, float] | None) -> None:
        self.host, self.port = host, port
        self.record = record
        self.received = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        while True:
            try:
                await self._open_once()
                return
            except Refused as refused:
                await asyncio.sleep(refused.retry_after)

    async def _open_once(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(
            b"GET /api/v1/stream HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n"
            % self.host.encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            writer.close()
            if status in (429, 503):
                found = re.search(rb"(?i)\r\nretry-after: *(\d+)", head)
                raise Refused(float(found.group(1)) if found else 1.0)
            raise RuntimeError(f"stream refused: {head.decode(errors='replace')}")
        self.reader, self.writer = reader, writer

    async def read(self, events: int) -> None:
        """Count price events until `events` (frames never straddle the chunks they come in)."""
        assert self.reader is not None  # noqa: S101 - opened first
        carry = b""
        while self.received < events:
            data = await self.reader.read(65536)
            if not data:
                raise EOFError("stream ended")
            data = carry + data
            end = data.rfind(b"\n\n")  # complete frames end here; the rest waits for more
            if end < 0:
                carry = data
                continue
            whole, carry = data[: end + 2], data[end + 2 :]
            if self.record is None:
                self.received += whole.count(PRICE)
            else:
                now = time.time()
                for found in PRICE_ID.finditer(whole):
                    self.record[found.group(1).decode()] = now
                    self.received += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def main(
    base: str, clients: int, events: int, out: Path, record: bool, within: float
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    url = urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    times: dict[str, float] = {}
    streams = [Client(host, port, times if record and i == 0 else None) for i in range(clients)]
    opening = asyncio.Semaphore(OPENING)

    async def open_one(client: Client) -> None:
        async with opening:
            await client.open()

    await asyncio.gather(*(open_one(c) for c in streams))
    print("ready", flush=True)
    reading = [asyncio.create_task(c.read(events)) for c in streams]
    _, pending = await asyncio.wait(reading, timeout=within)
    for task in pending:
        task.cancel()
    ended = await asyncio.gather(*reading, return_exceptions=True)
    failed = [e for e in ended if isinstance(e, BaseException)]
    if failed:
        short = sum(1 for c in streams if c.received < events)
        print(f"{short} streams short of {events} events, e.g. {failed[0]!r}", file=sys.stderr)
    out.write_text(json.dumps({"received": [c.received for c in streams], "times": times}))
    print("done", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for client in streams:
        client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.stream_clients")
    parser.add_argument("base")
    parser.add_argument("clients", type=int)
    parser.add_argument("events", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--record", action="store_true", help="receipt times of the first client")
    parser.add_argument("--within", type=float, default=90.0, help="seconds to read for at most")
    args = parser.parse_args()
    asyncio.run(main(args.base, args.clients, args.events, args.out, args.record, args.within))
