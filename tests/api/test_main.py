"""`python -m services.api` as real processes: scale-out, restarts, SIGTERM, a missing database."""

from __future__ import annotations

import asyncio
import signal
import time
from contextlib import AsyncExitStack
from datetime import timedelta

import httpx

from services.runner.embedded_db import free_port
from services.runner.processes import ServiceProcess
from tests.utils.api import T0, Market, api_process, ids, open_stream


async def test_two_processes_each_deliver_every_tick(database_url: str, market: Market) -> None:
    await market.stocks("AAPL", "NVDA")
    with api_process(database_url) as (_, one), api_process(database_url) as (_, two):
        async with AsyncExitStack() as stack:
            streams = []
            for url in (one, two):
                client = await stack.enter_async_context(httpx.AsyncClient(base_url=url))
                streams.append(await stack.enter_async_context(open_stream(client)))
            written = []
            for i in range(20):
                ts = T0 + timedelta(seconds=i)
                written.append(await market.ticks([("AAPL", ts, 1 + i), ("NVDA", ts, 2 + i)]))
            got = await asyncio.gather(*(s.prices(40) for s in streams))
    assert ids(got[0]) == ids(got[1]) == list(range(written[0] - 1, written[-1] + 1))


async def test_resume_across_a_restart_has_no_gap_or_duplicate(
    database_url: str, market: Market
) -> None:
    await market.stocks("AAPL")
    with api_process(database_url) as (_, url):
        async with httpx.AsyncClient(base_url=url) as client, open_stream(client) as stream:
            await market.series("AAPL", 10)
            before = await stream.prices(10)
    await market.series("AAPL", 10, start=T0 + timedelta(minutes=1))  # while no API runs
    with api_process(database_url) as (_, url):
        async with httpx.AsyncClient(base_url=url) as client:
            async with open_stream(client, Last_Event_ID=str(before[-1].id)) as stream:
                await market.series("AAPL", 5, start=T0 + timedelta(minutes=2))
                after = await stream.prices(15)
    everything = ids(before + after)
    assert everything == list(range(everything[0], everything[0] + 25))


async def test_sigterm_ends_open_streams_and_exits_promptly(
    database_url: str, market: Market
) -> None:
    await market.stocks("AAPL")
    with api_process(database_url) as (proc, url):
        async with httpx.AsyncClient(base_url=url) as client, open_stream(client) as stream:
            await market.ticks([("AAPL", T0, 1)])
            await stream.prices(1)
            started = time.monotonic()
            proc.signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 10)
            elapsed = time.monotonic() - started
            ended = False
            try:
                await stream.next(timeout=2)
            except EOFError:
                ended = True
    assert code == 0 and elapsed < 3, proc.output
    assert ended
    assert "ASGI callable returned without completing" not in proc.output


async def test_without_a_database_it_is_alive_but_not_ready() -> None:
    dead = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/stockstreamer?sslmode=disable"
    with api_process(dead) as (proc, url):
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            ready = await client.get("/readyz")
            stocks = await client.get("/api/v1/stocks")
    assert ready.status_code == 503
    assert stocks.status_code == 503 and stocks.headers["retry-after"] == "1"
    assert "secret" not in proc.output


def test_invalid_settings_exit_with_a_message() -> None:
    proc = ServiceProcess("services.api", {"STOCKSTREAMER_API_PORT": "99999"}).start()
    assert proc.wait(30) == 2
    assert "api_port" in proc.output


async def test_connections_beyond_limit_concurrency_get_a_quick_503(
    database_url: str, market: Market
) -> None:
    await market.stocks("AAPL")
    limits = {"STOCKSTREAMER_API_LIMIT_CONCURRENCY": "3", "STOCKSTREAMER_API_MAX_STREAMS": "2"}
    with api_process(database_url, limits) as (_, url):
        async with AsyncExitStack() as stack:
            for i in range(2):  # two streams (of two clients) hold two of the three places
                transport = httpx.AsyncHTTPTransport(local_address=f"127.0.0.{2 + i}")
                client = httpx.AsyncClient(base_url=url, transport=transport)
                await stack.enter_async_context(client)
                await stack.enter_async_context(open_stream(client))
            async with httpx.AsyncClient(base_url=url) as client:
                refused = await client.get("/api/v1/stocks")
    assert refused.status_code == 503
