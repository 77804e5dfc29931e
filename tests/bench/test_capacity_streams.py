"""The capacity run's lean SSE clients against a real API process: counting, ids, cut streams."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import asyncpg

from bench.capacity.load import Clients
from services.runner.embedded_db import free_port
from services.runner.processes import ServiceProcess
from tests.utils.api import T0, Market


@contextmanager
def api_process(database_url: str) -> Iterator[tuple[ServiceProcess, str]]:
    port = free_port()
    env = {"DATABASE_URL": database_url, "STOCKSTREAMER_API_PORT": str(port)}
    with ServiceProcess("services.api", env) as proc:
        url = f"http://127.0.0.1:{port}"
        proc.wait_http(f"{url}/readyz")
        yield proc, url


async def test_clients_count_the_window_and_notice_the_server_ending(
    database_url: str, db: asyncpg.Connection
) -> None:
    market = Market(db)
    await market.stocks("AAPL", "NVDA")
    ts = iter(T0 + timedelta(seconds=i) for i in range(100))
    before = await market.ticks([("AAPL", next(ts), 1.0)])  # before the window: not counted
    with api_process(database_url) as (api, url):
        clients = Clients("clients", url, 3)
        probe = Clients("probe", url, 1, probe_url=database_url)
        try:
            assert clients.expect(10)["open"] == 3
            assert probe.expect(10)["open"] == 1
            first, last = before + 2, before + 12  # ahead of every stream, as the run chooses them
            for c in (clients, probe):
                c.send(f"start {first}")
                c.send(f"stop {last}")
            written = []
            for _ in range(8):  # commits of two ticks each: ids before+1 .. before+16
                pair = [("AAPL", next(ts), 2.0), ("NVDA", next(ts), 3.0)]
                written.append(await market.ticks(pair))
            assert written[-1] == before + 16
            report, probed = clients.expect(10), probe.expect(10)
            # ids first+1 .. last: 10 events, though the window's edges split no commit here
            assert report["counts"] == {"10": 3}
            assert report["last"][0] >= last and report["behind"] == 0
            assert report["eof"] == 0 and report["disorder"] == 0 and report["errors"] == {}
            assert probed["counts"] == {"10": 1}
            # the probe times each commit of the window by its highest id: before+4 .. before+12
            assert len(probed["lags_ms"]) == 5
            assert all(0 <= lag < 5000 for lag in probed["lags_ms"])

            clients.send("start 0")  # every stream is past it: the window was announced late
            clients.send("report")
            assert clients.expect(10)["errors"] == {"late start": 3}

            api.stop()  # the server ends every stream
            clients.send("report")
            ended = clients.expect(10)
            assert ended["eof"] == 3 and ended["live"] == 0
        finally:
            assert clients.close() == 0
            assert probe.close() == 0
