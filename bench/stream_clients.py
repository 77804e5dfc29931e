"""SSE clients in a process of their own, so that the API is measured, not the load generator.

    python -m bench.stream_clients BASE_URL CLIENTS EVENTS OUT.json

Opens CLIENTS streams, prints "ready" once all are open, reads until each has EVENTS price events
(or 60 s pass), then writes {"received": [...per client...], "first": {id: receipt time}} to OUT
(receipt times of the first client only, epoch seconds).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
from httpx_sse import EventSource, aconnect_sse


async def _client(
    http: httpx.AsyncClient, opened: list[int], events: int, record: dict[str, float] | None
) -> int:
    while True:
        async with aconnect_sse(http, "GET", "/api/v1/stream") as source:
            if source.response.status_code != 503:
                source.response.raise_for_status()
                opened.append(1)
                return await _read(source, events, record)
            # a busy API answers 503 with Retry-After: come back then, as EventSource does
            wait = float(source.response.headers.get("retry-after", "1"))
        await asyncio.sleep(wait)


async def _read(source: EventSource, events: int, record: dict[str, float] | None) -> int:
    received = 0
    async for event in source.aiter_sse():
        if event.event != "price":
            continue
        if record is not None:
            record[event.id] = time.time()
        received += 1
        if received == events:
            break
    return received


async def main(base: str, clients: int, events: int, out: Path) -> None:
    limits = httpx.Limits(max_connections=clients + 10)
    timeout = httpx.Timeout(60.0)
    first: dict[str, float] = {}
    opened: list[int] = []
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as http:
        tasks = [
            asyncio.create_task(_client(http, opened, events, first if i == 0 else None))
            for i in range(clients)
        ]
        while len(opened) < clients:
            if any(t.done() for t in tasks):
                break  # one failed to open: the gather below reports why
            await asyncio.sleep(0.05)
        print("ready", flush=True)
        done, pending = await asyncio.wait(tasks, timeout=60)
        for task in pending:
            task.cancel()
        received = [t.result() if t in done and not t.exception() else 0 for t in tasks]
    out.write_text(json.dumps({"received": received, "first": first}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])))
