"""`python -m services.api` on several cores: one port, metrics added up, signals, restarts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.api.config import ApiSettings
from services.api.workers import OPEN_FILES_MARGIN
from services.common.cpus import available_cpus
from services.runner.processes import ServiceProcess
from tests.utils.api import T0, EventReader, Market, api_process, open_stream
from tests.utils.sockets import accepted, listening
from tests.utils.waiting import eventually

TWO = {"STOCKSTREAMER_API_WORKERS": "2"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scrape: Samples, name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def fresh(url: str) -> httpx.AsyncClient:
    """A client that opens a new connection for every request: each goes to a worker by chance."""
    return httpx.AsyncClient(
        base_url=url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
    )


async def streams_on_every_worker(
    stack: AsyncExitStack, url: str, workers: list[int], each: int, most: int = 40
) -> list[EventReader]:
    """Open streams (from several client addresses) until every worker has accepted `each`."""
    streams = []
    port = port_of(url)
    for i in range(most):
        transport = httpx.AsyncHTTPTransport(local_address=f"127.0.0.{2 + i % 8}")
        client = httpx.AsyncClient(base_url=url, timeout=10, transport=transport)
        await stack.enter_async_context(client)
        streams.append(await stack.enter_async_context(open_stream(client)))
        if all(accepted(pid, port) >= each for pid in workers):
            return streams
    raise AssertionError(f"{most} streams did not reach every worker: {workers}")


def log_lines(proc: ServiceProcess, message: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in proc.output.splitlines() if line.startswith("{")]
    return [line for line in lines if line["message"] == message]


async def test_streams_spread_over_the_workers_and_the_metrics_add_up(
    database_url: str, market: Market
) -> None:
    await market.stocks("AAPL")
    with api_process(database_url, TWO) as (proc, url):
        workers = proc.children()
        assert len(workers) == 2 and all(listening(pid, port_of(url)) for pid in workers)
        async with AsyncExitStack() as stack:
            streams = await streams_on_every_worker(stack, url, workers, each=2)
            for i in range(3):
                await market.ticks([("AAPL", T0 + timedelta(seconds=i), 1 + i)])
            received = [len(await s.prices(3)) for s in streams]
            async with fresh(url) as client:
                for _ in range(30):
                    assert (await client.get("/api/v1/stocks")).status_code == 200
                scrapes = [samples((await client.get("/metrics")).text) for _ in range(10)]

                async def all_sent() -> bool:
                    scrape = samples((await client.get("/metrics")).text)
                    sent = value(scrape, "stockstreamer_api_events_sent_total", event="price")
                    return sent == 3 * len(streams)

                await eventually(all_sent, message="events_sent adds up over the workers")
    assert received == [3] * len(streams)
    route = {"method": "GET", "route": "/api/v1/stocks", "status": "200"}
    for scrape in scrapes:  # whichever worker answered
        assert value(scrape, "stockstreamer_api_open_streams") == len(streams)
        assert value(scrape, "stockstreamer_api_request_seconds_count", **route) == 30
        assert value(scrape, "stockstreamer_api_workers") == 2
        assert value(scrape, "stockstreamer_api_listener_up") == 2
        for worker in ("0", "1"):
            memory = "stockstreamer_api_worker_resident_memory_bytes"
            assert value(scrape, memory, worker=worker) > 10e6
            assert value(scrape, "stockstreamer_api_worker_open_fds", worker=worker) > 2
    started = log_lines(proc, "api started")
    assert sorted((line["worker"], line["workers"]) for line in started) == [(0, 2), (1, 2)]
    assert {line["pid"] for line in started} == set(workers)


async def test_sigterm_ends_every_workers_streams_and_exits_cleanly(
    database_url: str, market: Market
) -> None:
    await market.stocks("AAPL")
    with api_process(database_url, TWO) as (proc, url):
        workers = proc.children()
        async with AsyncExitStack() as stack:
            streams = await streams_on_every_worker(stack, url, workers, each=1)
            await market.ticks([("AAPL", T0, 1)])
            for stream in streams:
                await stream.prices(1)
            started = time.monotonic()
            proc.signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 15)
            elapsed = time.monotonic() - started
            ended = 0
            for stream in streams:
                try:
                    await stream.next(timeout=2)
                except EOFError:
                    ended += 1
    assert code == 0 and elapsed < 5, proc.output
    assert ended == len(streams)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "no worker outlives it"
    assert "ASGI callable returned without completing" not in proc.output
    assert len(log_lines(proc, "api worker stopped")) == 2 and log_lines(proc, "api stopped")


def gone(pid: int) -> bool:
    """The process has ended (a zombie holds no sockets any more)."""
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


async def test_a_worker_that_dies_is_started_again_and_the_port_keeps_answering(
    database_url: str,
) -> None:
    with api_process(database_url, TWO) as (proc, url):
        before = proc.children()
        os.kill(before[0], signal.SIGKILL)
        await eventually(lambda: gone(before[0]))
        async with fresh(url) as client:
            answers = [(await client.get("/healthz")).status_code for _ in range(20)]

            def replaced() -> bool:
                now = proc.children()
                new = set(now) - set(before)
                return len(now) == 2 and any(listening(pid, port_of(url)) for pid in new)

            await eventually(replaced, timeout=15, message="a new worker listens")

            async def counted() -> bool:
                scrape = samples((await client.get("/metrics")).text)
                restarts = value(scrape, "stockstreamer_api_worker_restarts_total")
                return restarts == 1 and value(scrape, "stockstreamer_api_workers") == 2

            await eventually(counted, message="the restart is counted, both serve")
    assert answers == [200] * 20
    assert "api worker 0 died (signal Killed); starting it again" in proc.output


async def test_port_zero_is_one_free_port_for_every_worker(database_url: str) -> None:
    env = {"DATABASE_URL": database_url, "STOCKSTREAMER_API_PORT": "0"}
    env |= {"STOCKSTREAMER_LOG_FORMAT": "json", **TWO}
    with ServiceProcess("services.api", env) as proc:
        await eventually(lambda: log_lines(proc, "api starting workers"))
        address = str(log_lines(proc, "api starting workers")[0]["address"])
        port = int(address.rsplit(":", 1)[1])
        proc.wait_http(f"http://127.0.0.1:{port}/readyz")
        await eventually(lambda: len(proc.children()) == 2)
        await eventually(lambda: all(listening(pid, port) for pid in proc.children()))
    assert port != 0


async def test_by_default_one_worker_per_cpu_available(database_url: str) -> None:
    with api_process(database_url, {"STOCKSTREAMER_API_WORKERS": ""}) as (proc, _):
        await eventually(lambda: log_lines(proc, "api started"))
        cpus = available_cpus()
        await eventually(lambda: len(log_lines(proc, "api started")) == cpus)
        assert len(proc.children()) == (cpus if cpus > 1 else 0)
    assert {line["workers"] for line in log_lines(proc, "api started")} == {cpus}


def test_a_port_in_use_is_refused_not_shared() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"STOCKSTREAMER_API_PORT": str(port), **TWO}
        proc = ServiceProcess("services.api", env).start()
        assert proc.wait(30) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.output


def open_files(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit")


async def test_each_worker_raises_its_open_file_limit_or_says_it_cannot(
    database_url: str,
) -> None:
    share = ApiSettings().worker_share(2)
    needed = share.api_limit_concurrency + share.api_pool_size + OPEN_FILES_MARGIN
    with api_process(database_url, TWO, open_files=(256, needed * 2)) as (proc, _):
        raised = [open_files(pid) for pid in proc.children()]
    with api_process(database_url, TWO, open_files=(256, 512)) as (proc, _):
        warning = (
            f"open-file limit 512 is below the {needed} this process may need for its "
            f"{share.api_max_streams} streams; raise it: ulimit -n / compose `ulimits`"
        )
        await eventually(lambda: len(log_lines(proc, warning)) == 2, message=proc.output)
    assert raised == [(needed, needed * 2)] * 2


async def test_workers_export_every_family_one_process_does(database_url: str) -> None:
    """Dashboards and alerts query the same names, labelled families with no child yet included;
    only the one process's own process_* series are the workers' worker_* ones instead (and
    the multiprocess files keep no `_created` times)."""

    def families(text: str) -> dict[str, str]:
        return {f.name: f.type for f in text_string_to_metric_families(text)}

    with api_process(database_url) as (_, one), api_process(database_url, TWO) as (_, two):
        async with httpx.AsyncClient(timeout=10) as client:
            alone = families((await client.get(f"{one}/metrics")).text)
            workers = families((await client.get(f"{two}/metrics")).text)
    own = {name for name in alone if name.startswith("process_") or name.endswith("_created")}
    assert own and not own & set(workers)
    assert {n: t for n, t in alone.items() if n not in own} == workers
    assert workers["stockstreamer_api_history_query_seconds"] == "histogram"  # never used yet
