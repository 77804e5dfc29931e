"""The shared listener: slow clients are cut, others unaffected; a lost database is survived."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from services.api.events import Chunk
from services.api.listener import Broadcaster
from services.api.metrics import ApiMetrics
from tests.utils.api import T0, Market, ThreadedApi, ids, open_stream
from tests.utils.postgres import with_database
from tests.utils.waiting import eventually

BATCHES = 40
BATCH = 500


def slow_client(port: int) -> socket.socket:
    """A stream client with a tiny receive buffer that then stops reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /api/v1/stream HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_slow_client_is_cut_while_a_fast_one_keeps_receiving(
    database_url: str, market: Market
) -> None:
    await market.stocks("AAPL")
    api = ThreadedApi(database_url, send_buffer=16384, api_stream_queue_size=16).start()
    slow = slow_client(api.port)
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
            async with open_stream(client) as fast:
                await eventually(lambda: api.metric("stockstreamer_api_open_streams") == 2)
                received: list[int] = []

                async def read_all() -> None:
                    while len(received) < BATCHES * BATCH:
                        received.extend(ids(await fast.take(BATCH)))

                reader = asyncio.create_task(read_all())
                for b in range(BATCHES):
                    start = T0 + timedelta(seconds=b * BATCH)
                    await market.series("AAPL", BATCH, start=start)
                    await asyncio.sleep(0.01)
                await asyncio.wait_for(reader, 20)
        slow_bytes = await asyncio.to_thread(read_to_end, slow)
    finally:
        slow.close()
        api.stop()
    assert received == list(range(received[0], received[0] + BATCHES * BATCH))
    assert api.metric("stockstreamer_api_slow_client_disconnects_total") == 1
    # The slow client got a prefix of the stream, then the connection closed.
    slow_ids = [
        int(line[4:]) for line in slow_bytes.decode().splitlines() if line.startswith("id: ")
    ]
    assert len(slow_ids) < BATCHES * BATCH
    assert slow_ids == received[: len(slow_ids)]


async def _outage(database_url: str, keep: asyncpg.Connection, allow: bool) -> None:
    """Refuse (or allow again) new connections to the test database and cut all but `keep`."""
    name = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(with_database(database_url, "postgres"))
    try:
        ident = await admin.fetchval("SELECT quote_ident($1)", name)
        await admin.execute(f"ALTER DATABASE {ident} ALLOW_CONNECTIONS {str(allow).lower()}")
        if not allow:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> $2",
                name,
                keep.get_server_pid(),
            )
    finally:
        await admin.close()


async def test_database_outage_is_503_then_the_stream_catches_up(
    api: ThreadedApi,
    client: httpx.AsyncClient,
    market: Market,
    db: asyncpg.Connection,
    database_url: str,
) -> None:
    await market.stocks("AAPL")
    async with open_stream(client) as stream:
        first = await stream.prices(1) if await market.ticks([("AAPL", T0, 1)]) else []
        await _outage(database_url, db, allow=False)
        await eventually(lambda: not api.listening, message="listener did not notice")
        for i in range(1, 6):  # written while the API cannot read them
            await market.ticks([("AAPL", T0 + timedelta(seconds=i), 1 + i)])
        await market.profile("AAPL", "Apple", "https://logo.example/aapl.png")  # missed NOTIFY
        assert (await client.get("/readyz")).status_code == 503
        for path in ("/api/v1/stocks", "/api/v1/prices", "/api/v1/stream"):
            response = await client.get(path)
            assert response.status_code == 503, path
            assert response.json() == {"detail": "database unavailable, try again shortly"}
        assert (await client.get("/healthz")).status_code == 200
        await _outage(database_url, db, allow=True)
        caught_up = await stream.take(6, timeout=10)
        await market.ticks([("AAPL", T0 + timedelta(seconds=9), 9)])
        rest = [e for e in caught_up if e.event == "price"] + await stream.prices(1)
    (stock,) = [e for e in caught_up if e.event == "stock"]  # re-announced after the outage
    assert stock.data["name"] == "Apple"
    assert ids(first + rest) == list(range(int(first[0].id or 0), int(first[0].id or 0) + 7))
    assert api.metric("stockstreamer_api_listener_reconnects_total") >= 1
    assert (await client.get("/readyz")).status_code == 200


async def test_removals_and_firings_while_away_are_sent_after_the_reconnect(
    api: ThreadedApi,
    client: httpx.AsyncClient,
    market: Market,
    db: asyncpg.Connection,
    database_url: str,
) -> None:
    await market.stocks("AAPL")
    alert = await db.fetchval(
        "INSERT INTO alerts (symbol, condition, value, channels)"
        " VALUES ('AAPL', 'above', 1, '{browser}') RETURNING id"
    )
    async with open_stream(client) as stream:
        async with db.transaction():  # added, as the API adds a symbol
            await db.execute("INSERT INTO watchlist (symbol, origin) VALUES ('AMD', 'api')")
            await db.execute("SELECT pg_notify('watchlist', 'AMD')")
        assert (await stream.next()).data["state"] == "pending"
        await _outage(database_url, db, allow=False)
        await eventually(lambda: not api.listening, message="listener did not notice")
        async with db.transaction():  # their notifications reach no one
            await db.execute("DELETE FROM watchlist WHERE symbol = 'AMD'")
            await db.execute("SELECT pg_notify('watchlist', 'AMD')")
        firing = await db.fetchval(
            "INSERT INTO alert_firings (alert_id, price, line, tick_ts)"
            " VALUES ($1, 2, 1, now()) RETURNING id",
            alert,
        )
        await db.execute("SELECT pg_notify('alert', $1)", str(firing))
        await _outage(database_url, db, allow=True)
        caught_up = await stream.take(3, timeout=10)

    stocks = {e.data["symbol"]: e.data["state"] for e in caught_up if e.event == "stock"}
    assert stocks == {"AAPL": "live", "AMD": "removed"}
    (fired,) = [e for e in caught_up if e.event == "alert"]
    assert (fired.data["firing_id"], fired.data["alert_id"]) == (firing, alert)


class PausingConnection(asyncpg.Connection):
    """A real connection whose first read lets the test act while the read is under way."""

    during_first_read: asyncio.Event
    resume: asyncio.Event

    async def fetch(  # type: ignore[override]
        self, query: str, *args: object, timeout: float | None = None
    ) -> list[asyncpg.Record]:
        rows = await super().fetch(query, *args, timeout=timeout)
        if not self.during_first_read.is_set():
            self.during_first_read.set()
            await self.resume.wait()
        return rows


async def test_ticks_announced_during_a_read_are_read_next(
    database_url: str, market: Market
) -> None:
    """A notification arriving while the listener reads must not be lost (it once was)."""
    await market.stocks("AAPL")
    first = await market.ticks([("AAPL", T0, 1)])
    broadcaster = Broadcaster(database_url, None, ApiMetrics())
    sub = broadcaster.subscribe(None, 100)
    broadcaster.last_seen = first - 1
    conn = await asyncpg.connect(database_url, connection_class=PausingConnection)
    conn.during_first_read, conn.resume = asyncio.Event(), asyncio.Event()
    try:
        broadcaster._on_notification(conn, 0, "prices", str(first))
        drain = asyncio.create_task(broadcaster._drain(conn))
        await conn.during_first_read.wait()
        # The next batch commits and is announced while the first read is still running.
        second = await market.ticks([("AAPL", T0 + timedelta(seconds=1), 2)])
        broadcaster._on_notification(conn, 0, "prices", str(second))
        conn.resume.set()
        await asyncio.wait_for(drain, 5)
    finally:
        await conn.close()
    broadcaster.resume(sub, None)  # its stream starts: what it was handed is encoded for it
    queued = await asyncio.wait_for(sub.next_write(), 1)
    assert queued is not None
    data = b"".join(c.data for c in queued if isinstance(c, Chunk))
    delivered = [int(i) for i in re.findall(rb"id: (\d+)", data)]
    assert delivered == [first, second]


# Anyone who can log in may NOTIFY `history`: none of these may reach a stream.
BAD_HISTORY = [
    ("malformed", "reload everything"),
    ("malformed", '{"symbols": ["AAPL"]}'),
    ("symbols", '{"symbols": [], "start": 1, "end": 2}'),
    ("symbols", '{"symbols": ["a b"], "start": 1, "end": 2}'),
    ("untracked", '{"symbols": ["AAPL", "ZZZ"], "start": 1, "end": 2}'),
    ("window", '{"symbols": ["AAPL"], "start": 5, "end": 2}'),
    ("window", '{"symbols": ["AAPL"], "start": -5, "end": 2}'),
    ("window", '{"symbols": ["AAPL"], "start": 1, "end": 99999999999999}'),
]


async def test_history_notifications_are_checked_and_merged(
    database_url: str, market: Market, db: asyncpg.Connection
) -> None:
    await market.stocks("AAPL", "NVDA")
    api = ThreadedApi(database_url, api_history_event_interval=1.0).start()
    try:
        async with api.client() as client, open_stream(client) as stream:
            await eventually(lambda: api.listening)
            for _, payload in BAD_HISTORY:
                await db.execute("SELECT pg_notify('history', $1)", payload)
            for i in range(40):  # one, then a flood while the first event is the latest
                symbol = "AAPL" if i % 2 else "NVDA"
                payload = json.dumps({"symbols": [symbol], "start": 1000 + i, "end": 2000 + i})
                await db.execute("SELECT pg_notify('history', $1)", payload)
                if i == 0:
                    first = await stream.next()
                    at = time.monotonic()
            second = await stream.next(timeout=3)
            gap = time.monotonic() - at
            with pytest.raises(TimeoutError):
                await stream.next(timeout=1.5)  # nothing more: the flood was merged into one
    finally:
        api.stop()
    assert first.event == second.event == "history"
    assert first.data == {"symbols": ["NVDA"], "start": 1000, "end": 2000}
    assert gap > 0.8  # not before the interval since the first
    assert sorted(second.data["symbols"]) == ["AAPL", "NVDA"]
    assert (second.data["start"], second.data["end"]) == (1001, 2039)
    assert api.metric("stockstreamer_api_notifications_total", channel="history") == 48
    for reason in ("malformed", "symbols", "untracked", "window"):
        expected = sum(1 for r, _ in BAD_HISTORY if r == reason)
        dropped = api.metric(
            "stockstreamer_api_notifications_dropped_total", channel="history", reason=reason
        )
        assert dropped == expected, reason
