"""The watchlist through the API: adding and removing symbols, their state, and what is shown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import httpx

from tests.api.conftest import TOKEN
from tests.utils.api import T0, Market, ThreadedApi, open_stream

# What the fetcher does as it takes a symbol up (its own statements live in services/fetcher).
SET_STATE = """
UPDATE watchlist SET state = $2, progress = $3, reason = $4, updated_at = now() WHERE symbol = $1
"""


async def fetcher_sets(
    db: asyncpg.Connection,
    symbol: str,
    state: str,
    progress: float | None = None,
    reason: str | None = None,
) -> None:
    async with db.transaction():
        await db.execute(SET_STATE, symbol, state, progress, reason)
        await db.execute("SELECT pg_notify('watchlist', $1)", symbol)


async def listen(db: asyncpg.Connection, channel: str) -> asyncio.Queue[str]:
    """The payloads of `channel`'s notifications, as they come."""
    received: asyncio.Queue[str] = asyncio.Queue()
    await db.add_listener(channel, lambda *args: received.put_nowait(str(args[-1])))
    return received


async def test_a_symbol_added_is_pending_at_its_location_and_announced(
    writer: httpx.AsyncClient, market: Market, database_url: str
) -> None:
    await market.stocks("AAPL")
    listener = await asyncpg.connect(database_url)
    try:
        notified = await listen(listener, "watchlist")
        response = await writer.post("/api/v1/stocks", json={"symbol": "amd"})
        payload = await asyncio.wait_for(notified.get(), 5)
    finally:
        await listener.close()

    assert response.status_code == 202
    assert response.headers["location"] == "/api/v1/stocks/AMD"
    stock = response.json()
    assert (stock["symbol"], stock["state"], stock["origin"]) == ("AMD", "pending", "api")
    assert stock["progress"] is stock["reason"] is stock["last_price"] is None
    assert payload == "AMD"
    assert (await writer.get(response.headers["location"])).json() == stock
    listed = (await writer.get("/api/v1/stocks")).json()
    assert [(s["symbol"], s["state"], s["origin"]) for s in listed] == [
        ("AAPL", "live", "config"),
        ("AMD", "pending", "api"),
    ]


async def test_the_state_the_fetcher_sets_is_what_the_api_shows(
    writer: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await writer.post("/api/v1/stocks", json={"symbol": "AMD"})
    await fetcher_sets(db, "AMD", "backfilling", progress=0.4)
    backfilling = (await writer.get("/api/v1/stocks/AMD")).json()
    await fetcher_sets(db, "AMD", "live")
    live = (await writer.get("/api/v1/stocks/AMD")).json()

    assert (backfilling["state"], backfilling["progress"]) == ("backfilling", 0.4)
    assert (live["state"], live["progress"]) == ("live", None)


async def test_adding_a_symbol_again_keeps_it_and_retries_a_rejected_one(
    writer: httpx.AsyncClient, market: Market, db: asyncpg.Connection, writable: ThreadedApi
) -> None:
    await market.stocks("AAPL")
    again = await writer.post("/api/v1/stocks", json={"symbol": "AAPL"})
    assert again.status_code == 202
    assert (again.json()["state"], again.json()["origin"]) == ("live", "config")

    await writer.post("/api/v1/stocks", json={"symbol": "ZZTOP"})
    await fetcher_sets(db, "ZZTOP", "rejected", reason="unknown symbol")
    rejected = (await writer.get("/api/v1/stocks/ZZTOP")).json()
    retried = await writer.post("/api/v1/stocks", json={"symbol": "ZZTOP"})

    assert (rejected["state"], rejected["reason"]) == ("rejected", "unknown symbol")
    assert retried.status_code == 202
    assert (retried.json()["state"], retried.json()["reason"]) == ("pending", None)
    metric = "stockstreamer_api_watchlist_changes_total"
    assert writable.metric(metric, change="added") == 1
    assert writable.metric(metric, change="retried") == 1


async def test_a_malformed_or_missing_symbol_is_422_naming_the_field(
    writer: httpx.AsyncClient,
) -> None:
    for body in ({"symbol": "1ABC"}, {"symbol": "A$"}, {"symbol": ""}, {}, {"symbol": 5}):
        response = await writer.post("/api/v1/stocks", json=body)
        assert response.status_code == 422, body
        assert response.json()["detail"].startswith("body field 'symbol': "), body
    not_json = await writer.post(
        "/api/v1/stocks", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 422 and not_json.json()["detail"].startswith("body: ")
    assert (await writer.get("/api/v1/stocks")).json() == []


async def test_a_body_over_4_kib_is_413(writer: httpx.AsyncClient) -> None:
    padded = {"symbol": "AMD", "pad": "x" * 5000}
    declared = await writer.post("/api/v1/stocks", json=padded)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(5):
            yield b" " * 1000
        yield b'{"symbol": "AMD"}'

    chunked = await writer.post(
        "/api/v1/stocks", content=chunks(), headers={"Content-Type": "application/json"}
    )
    for response in (declared, chunked):
        assert response.status_code == 413
        assert response.json() == {"detail": "body: larger than 4096 bytes"}
    assert (await writer.get("/api/v1/stocks")).json() == []


async def test_removing_a_configured_symbol_is_409_and_an_unknown_one_404(
    writer: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("AAPL")
    configured = await writer.delete("/api/v1/stocks/AAPL")
    unknown = await writer.delete("/api/v1/stocks/NVDA")
    malformed = await writer.delete("/api/v1/stocks/1ABC")

    assert configured.status_code == 409
    assert "STOCKSTREAMER_SYMBOLS" in configured.json()["detail"]
    assert configured.json()["detail"].startswith("path parameter 'symbol': ")
    assert unknown.status_code == 404 and unknown.json() == {"detail": "unknown symbol 'NVDA'"}
    assert malformed.status_code == 422
    assert [s["symbol"] for s in (await writer.get("/api/v1/stocks")).json()] == ["AAPL"]


async def test_at_most_max_symbols_are_tracked_rejected_ones_not_counted(
    database_url: str, market: Market, db: asyncpg.Connection
) -> None:
    await market.stocks("AAPL")
    api = ThreadedApi(database_url, api_token=TOKEN, max_symbols=3).start()
    try:
        async with api.client(Authorization=f"Bearer {TOKEN}") as writer:
            for symbol in ("AMD", "ZZBAD"):
                assert (await writer.post("/api/v1/stocks", json={"symbol": symbol})).is_success
            full = await writer.post("/api/v1/stocks", json={"symbol": "INTC"})
            known = await writer.post("/api/v1/stocks", json={"symbol": "AMD"})  # no change
            await fetcher_sets(db, "ZZBAD", "rejected", reason="unknown symbol")
            room = await writer.post("/api/v1/stocks", json={"symbol": "INTC"})
            retry = await writer.post("/api/v1/stocks", json={"symbol": "ZZBAD"})  # counts again
    finally:
        api.stop()

    assert full.status_code == 409
    assert full.json()["detail"].startswith("body field 'symbol': at most 3 symbols are tracked")
    assert known.status_code == 202
    assert room.status_code == 202
    assert retry.status_code == 409


async def test_a_removed_symbol_vanishes_everywhere_and_its_history_comes_back(
    writer: httpx.AsyncClient, market: Market, db: asyncpg.Connection
) -> None:
    await market.stocks("AAPL")
    await writer.post("/api/v1/stocks", json={"symbol": "AMD"})
    await market.stocks("AMD")  # the fetcher's rows for it
    await market.ticks([("AMD", T0, 150), ("AAPL", T0, 200)])
    window = {"start": str(T0 - timedelta(hours=1)), "end": str(T0 + timedelta(hours=1))}
    shown = await writer.get("/api/v1/prices", params={"symbols": "AMD", **window})
    assert shown.json()["series"][0]["price"] == [150]

    removed = await writer.delete("/api/v1/stocks/amd")

    assert removed.status_code == 204 and removed.content == b""
    assert [s["symbol"] for s in (await writer.get("/api/v1/stocks")).json()] == ["AAPL"]
    for path in (
        "/api/v1/stocks/AMD",
        "/api/v1/stocks/AMD/logo",
        "/api/v1/stocks/AMD/highlow",
        "/api/v1/prices?symbols=AMD",
        "/api/v1/prices/latest?symbols=AMD",
        "/api/v1/bars?symbols=AMD",
        "/api/v1/prices.csv?symbols=AMD",
        "/api/v1/bars.csv?symbols=AMD",
        "/api/v1/stream?symbols=AMD",
    ):
        response = await writer.get(path)
        assert response.status_code == 404, path
    everything = await writer.get("/api/v1/prices", params=window)
    assert [s["symbol"] for s in everything.json()["series"]] == ["AAPL"]
    latest = await writer.get("/api/v1/prices/latest")
    assert [p["symbol"] for p in latest.json()] == ["AAPL"]
    exported = await writer.get("/api/v1/prices.csv", params=window)
    assert "AMD" not in exported.text and "AAPL" in exported.text
    assert await db.fetchval("SELECT count(*) FROM ticks WHERE symbol = 'AMD'") == 1  # kept

    await writer.post("/api/v1/stocks", json={"symbol": "AMD"})
    back = await writer.get("/api/v1/prices", params={"symbols": "AMD", **window})
    assert back.json()["series"][0]["price"] == [150]


async def test_stock_events_follow_the_watchlist_on_every_stream(
    writer: httpx.AsyncClient, market: Market, db: asyncpg.Connection
) -> None:
    await market.stocks("AAPL")
    async with (
        open_stream(writer) as every,
        open_stream(writer, {"symbols": "AAPL"}) as aapl_only,
    ):
        await writer.post("/api/v1/stocks", json={"symbol": "AMD"})
        pending = await every.next()
        await fetcher_sets(db, "AMD", "backfilling", progress=0.5)
        backfilling = await every.next()
        await market.stocks("AMD")
        await market.ticks([("AMD", T0, 150)])  # a live tick of the new symbol reaches it
        price = await every.next()
        await writer.delete("/api/v1/stocks/AMD")
        removed = await every.next()
        await market.ticks([("AMD", T0 + timedelta(seconds=1), 151), ("AAPL", T0, 200)])
        after = await every.next()  # a tick in flight of a removed symbol is not sent
        aapl = await aapl_only.next()  # none of AMD's events, then AAPL's tick

    assert (pending.event, pending.data["symbol"], pending.data["state"]) == (
        "stock",
        "AMD",
        "pending",
    )
    assert (backfilling.data["state"], backfilling.data["progress"]) == ("backfilling", 0.5)
    assert (price.event, price.data["symbol"]) == ("price", "AMD")
    assert removed.event == "stock"
    assert removed.data == {
        "symbol": "AMD",
        "state": "removed",
        "name": None,
        "logo_url": None,
        "week52_high": None,
        "week52_low": None,
        "previous_close": None,
        "metadata_updated_at": None,
        "last_price": None,
        "last_ts": None,
        "change": None,
        "change_pct": None,
        "source": None,
        "failover": False,
        "progress": None,
        "reason": None,
        "origin": None,
    }
    assert (after.event, after.data["symbol"]) == ("price", "AAPL")
    assert (aapl.event, aapl.data["symbol"]) == ("price", "AAPL")


async def test_the_editor_writes_only_what_the_api_needs(writable: ThreadedApi) -> None:
    async def probe() -> list[str]:
        async with writable.app.state.pool.acquire() as conn:
            await conn.execute("INSERT INTO watchlist (symbol, origin) VALUES ('AMD', 'api')")
            await conn.execute("DELETE FROM watchlist WHERE symbol = 'AMD'")
            try:
                await conn.execute("TRUNCATE watchlist")
            except asyncpg.InsufficientPrivilegeError as exc:
                return [type(exc).__name__]
            return ["truncated"]

    assert writable.run(probe()) == ["InsufficientPrivilegeError"]
