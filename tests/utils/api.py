"""API test helpers: the API on a free loopback port, and a market that writes like the fetcher."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import httpx
import uvicorn

from services.api.app import create_app
from services.api.config import ApiSettings
from services.api.server import ApiServer
from services.common.models import Tick
from services.common.retention import set_retention
from services.fetcher import queries as fetcher_queries
from services.fetcher.store import TickStore
from services.runner.embedded_db import free_port
from services.runner.processes import ServiceProcess
from tests.utils.sockets import listening

T = TypeVar("T")
# What the fetcher does for its configured symbols at start: tracked, as configuration, live.
WATCH_CONFIGURED = """
INSERT INTO watchlist (symbol, origin, state) SELECT unnest($1::text[]), 'config', 'live'
ON CONFLICT (symbol) DO NOTHING
"""
T0 = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)  # a Monday, 10:00 in New York


class ThreadedApi:
    """The real app served by uvicorn on its own thread and event loop, over loopback TCP."""

    def __init__(self, database_url: str, send_buffer: int | None = None, **settings: Any) -> None:
        self.settings = ApiSettings(database_url=database_url, **settings)
        self.app = create_app(self.settings)
        self.sock = socket.socket()
        if send_buffer:
            # Accepted sockets inherit it: a stalled reader fills it in kilobytes, not megabytes.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
            lifespan="on",
            # as `python -m services.api` serves: the app alone decides whose X-Forwarded-For counts
            proxy_headers=False,
        )
        self.server = ApiServer(config)  # what `python -m services.api` runs: it ends streams
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve(sockets=[self.sock])

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the server's event loop (where its pool lives) and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self) -> ThreadedApi:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "API did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    @property
    def listening(self) -> bool:
        """Whether the stream listener holds its LISTEN connection."""
        return bool(self.app.state.broadcaster.connected)

    def metric(self, name: str, **labels: str) -> float:
        value = self.app.state.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else float(value)

    def client(self, address: str = "127.0.0.1", **headers: str) -> httpx.AsyncClient:
        """An HTTP client whose connections come from `address` (any of 127.0.0.0/8)."""
        transport = httpx.AsyncHTTPTransport(local_address=address)
        return httpx.AsyncClient(
            base_url=self.url, timeout=10, transport=transport, headers=headers
        )


@contextmanager
def api_process(
    database_url: str,
    env: Mapping[str, str] | None = None,
    open_files: tuple[int, int] | None = None,
) -> Iterator[tuple[ServiceProcess, str]]:
    """`python -m services.api` on a free port, once it answers; one process unless `env` sets
    STOCKSTREAMER_API_WORKERS."""
    port = free_port()
    settings = {
        "DATABASE_URL": database_url,
        "STOCKSTREAMER_API_PORT": str(port),
        "STOCKSTREAMER_LOG_FORMAT": "json",
        "STOCKSTREAMER_API_WORKERS": "1",
        **(env or {}),
    }
    with ServiceProcess("services.api", settings, open_files=open_files) as proc:
        url = f"http://127.0.0.1:{port}"
        proc.wait_http(f"{url}/healthz")
        # One worker answering is not all of them: each binds its own socket when it is ready.
        workers = int(settings["STOCKSTREAMER_API_WORKERS"] or 1)  # unset: the test checks them
        deadline = time.monotonic() + 30
        while workers > 1 and not (
            len(pids := proc.children()) == workers and all(listening(p, port) for p in pids)
        ):
            assert time.monotonic() < deadline, f"{workers} workers not listening:\n{proc.output}"
            time.sleep(0.05)
        yield proc, url


class Market:
    """Writes stocks and ticks through the fetcher's own store: one transaction per batch.

    On the owner's connection it first sets a retention of `keep` (ten years), so the fixed dates
    the tests use are kept as raw ticks; None leaves the retention to the owner.
    """

    KEEP = timedelta(days=3650)

    def __init__(self, conn: asyncpg.Connection, keep: timedelta | None = KEEP) -> None:
        self.conn = conn
        self.keep = keep
        self._store: TickStore | None = None

    async def store(self) -> TickStore:
        if self._store is None:
            if self.keep is not None:
                await set_retention(self.conn, self.keep, self.keep)
            self._store = await TickStore.open(self.conn, [])
        return self._store

    async def stocks(self, *symbols: str) -> None:
        """Configured symbols, tracked and live: in the watchlist, and in `stocks`."""
        await self.conn.execute(WATCH_CONFIGURED, list(symbols))
        await self.conn.execute(fetcher_queries.ENSURE_STOCKS, list(symbols))

    async def ticks(self, ticks: Iterable[tuple[str, datetime, float | Decimal]]) -> int:
        """Insert live ticks and NOTIFY `prices` on commit; returns the batch's highest event id."""
        rows = [Tick(r[0], r[1], Decimal(str(r[2]))) for r in ticks]
        written = await (await self.store()).write_live(rows)
        assert written.inserted == len(rows) and written.max_event_id is not None
        return written.max_event_id

    async def series(
        self, symbol: str, count: int, start: datetime = T0, step: timedelta = timedelta(seconds=1)
    ) -> list[int]:
        """`count` ticks of one symbol `step` apart, 500 a batch; returns each batch's max id."""
        ids = []
        for first in range(0, count, 500):
            batch = [
                (symbol, start + step * i, 100 + (i % 50) / 10)
                for i in range(first, min(count, first + 500))
            ]
            ids.append(await self.ticks(batch))
        return ids

    async def history(self, ticks: Sequence[tuple[str, datetime, float]]) -> None:
        """Insert backfilled ticks and NOTIFY `history`, as the fetcher's backfill does."""
        rows = [Tick(t[0], t[1], Decimal(str(t[2]))) for t in ticks]
        await (await self.store()).write_history(rows)

    async def week52(
        self, symbol: str, high: float, low: float, previous_close: float | None = None
    ) -> None:
        async with self.conn.transaction():
            changed = await self.conn.fetch(
                fetcher_queries.UPSERT_WEEK52,
                [symbol],
                [Decimal(str(high))],
                [Decimal(str(low))],
                [None if previous_close is None else Decimal(str(previous_close))],
            )
            for row in changed:
                await self.conn.execute(fetcher_queries.NOTIFY, "stocks", row["symbol"])

    async def profile(self, symbol: str, name: str, logo_url: str) -> None:
        async with self.conn.transaction():
            changed = await self.conn.fetch(
                fetcher_queries.UPSERT_PROFILES, [symbol], [name], [logo_url]
            )
            for row in changed:
                await self.conn.execute(fetcher_queries.NOTIFY, "stocks", row["symbol"])


@dataclass
class Event:
    """One received Server-Sent Event."""

    event: str
    data: Any
    id: str | None


class EventReader:
    """Parses a streaming response into events, keeping the comments and events it skips.

    `market` events (one on connect, more at the market's opens and closes) are skipped unless
    `skip` says otherwise: most tests are about the other events.
    """

    def __init__(self, response: httpx.Response, skip: Iterable[str] = ("market",)) -> None:
        self.response = response
        self.comments: list[str] = []
        self.skipped: list[Event] = []
        self.skip = frozenset(skip)
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 5.0) -> Event:
        """The next event; fails after `timeout` seconds without one."""
        async with asyncio.timeout(timeout):
            fields: dict[str, str] = {}
            async for line in self._lines:
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                elif fields:
                    data = json.loads(fields["data"]) if "data" in fields else None
                    event = Event(fields.get("event", "message"), data, fields.get("id"))
                    fields = {}
                    if event.event not in self.skip:
                        return event
                    self.skipped.append(event)
            raise EOFError("stream ended")

    async def comment(self, timeout: float = 5.0) -> str:
        """The next comment line (a heartbeat), passing over `skip` events only: others fail it."""
        async with asyncio.timeout(timeout):
            fields: dict[str, str] = {}
            async for line in self._lines:
                if line.startswith(":"):
                    return line[1:].strip()
                if line:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                elif fields:
                    event = fields.get("event", "message")
                    assert event in self.skip, f"expected a comment, got an event {fields!r}"
                    data = json.loads(fields["data"]) if "data" in fields else None
                    self.skipped.append(Event(event, data, fields.get("id")))
                    fields = {}
            raise EOFError("stream ended")

    async def take(self, count: int, timeout: float = 5.0) -> list[Event]:
        return [await self.next(timeout) for _ in range(count)]

    async def prices(self, count: int, timeout: float = 5.0) -> list[Event]:
        """The next `count` price events, skipping others."""
        found: list[Event] = []
        while len(found) < count:
            event = await self.next(timeout)
            if event.event == "price":
                found.append(event)
        return found


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient,
    params: dict[str, str] | None = None,
    skip: Iterable[str] = ("market",),
    **headers: str,
) -> AsyncIterator[EventReader]:
    """GET /api/v1/stream, checked to be an event stream; `skip`: event types passed over."""
    headers = {k.replace("_", "-"): v for k, v in headers.items()}
    async with client.stream("GET", "/api/v1/stream", params=params, headers=headers) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventReader(response, skip)


def ids(events: Iterable[Event]) -> list[int]:
    return [int(e.id) for e in events if e.id is not None]
