"""The page's door, on a real dashboard process: page rates, the build line, the session cap."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from bokeh.util.token import generate_jwt_token, generate_session_id, get_token_payload
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

from services.runner.embedded_db import free_port
from services.runner.processes import ServiceProcess
from tests.dashboard.fake_api import FakeApi

PAGE_TITLE = "<title>stockstreamer · live stock prices</title>"
BUSY_TITLE = "<title>stockstreamer · busy</title>"


class Dashboard:
    """A dashboard process on a free port, and requests to it from chosen loopback addresses."""

    def __init__(self, process: ServiceProcess, port: int) -> None:
        self.process = process
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def get(
        self, path: str = "/", source: str = "127.0.0.1", headers: dict[str, str] | None = None
    ) -> httpx.Response:
        transport = httpx.HTTPTransport(local_address=source)
        with httpx.Client(transport=transport, timeout=30) as client:
            return client.get(f"{self.base}{path}", headers=headers)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and sample.labels == (labels or {}):
                    return sample.value
        return None

    def wait_metric(self, name: str, value: float, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while (seen := self.metric(name)) != value:
            assert time.monotonic() < deadline, f"{name} is {seen}, not {value}"
            time.sleep(0.1)

    def websocket(self, token: str) -> connect:
        return connect(
            f"ws://127.0.0.1:{self.port}/ws",
            subprotocols=[Subprotocol("bokeh"), Subprotocol(token)],  # as BokehJS sends it
            origin=Origin(self.base),
            open_timeout=10,
        )


@contextmanager
def dashboard(fake_api: FakeApi, **settings: str) -> Iterator[Dashboard]:
    port = free_port()
    env = {
        "STOCKSTREAMER_API_URL": fake_api.url,
        "STOCKSTREAMER_DASHBOARD_PORT": str(port),
        **{f"STOCKSTREAMER_{name.upper()}": value for name, value in settings.items()},
    }
    with ServiceProcess("services.dashboard", env) as process:
        process.wait_http(f"http://127.0.0.1:{port}/healthz")
        yield Dashboard(process, port)


def token(page: httpx.Response) -> str:
    found = re.search(r'"token":"([^"]+)"', page.text)
    assert found, "no session token in the page"
    return found.group(1)


def assert_notice(response: httpx.Response, status: int, reason: str) -> None:
    """The light refusal: the status, Retry-After, a small static page, no Bokeh session."""
    assert response.status_code == status, response.text[:300]
    assert int(response.headers["Retry-After"]) >= 1
    assert BUSY_TITLE in response.text and f'data-status="{reason}"' in response.text
    assert 'http-equiv="refresh"' in response.text  # a browser comes back by itself
    assert len(response.content) < 2000 and "token" not in response.text.lower()


def test_a_client_over_its_page_rate_gets_429_and_others_are_served(fake_api: FakeApi) -> None:
    with dashboard(fake_api, dashboard_page_burst="3", dashboard_page_rate="0.05") as d:
        pages = [d.get(source="127.0.0.2") for _ in range(3)]
        refused = d.get(source="127.0.0.2")
        other = d.get(source="127.0.0.3")
        assert [p.status_code for p in pages] == [200, 200, 200]
        assert PAGE_TITLE in pages[0].text
        assert_notice(refused, 429, "rate_limited")
        assert 15 <= int(refused.headers["Retry-After"]) <= 20  # a token every 20 s
        assert other.status_code == 200 and PAGE_TITLE in other.text
        refusals = d.metric(
            "stockstreamer_dashboard_pages_refused_total", {"reason": "rate_limited"}
        )
        assert refusals == 1
        assert d.metric("stockstreamer_dashboard_unused_sessions") == 4  # the refusal built none


def test_forwarded_for_names_the_client_only_from_a_trusted_proxy(fake_api: FakeApi) -> None:
    settings = {"dashboard_page_burst": "2", "dashboard_page_rate": "0.01"}
    with dashboard(fake_api, trusted_proxies="127.0.0.1", **settings) as d:
        viewer = {"X-Forwarded-For": "198.51.100.1"}
        via_proxy = [d.get(headers=viewer).status_code for _ in range(3)]
        neighbour = d.get(headers={"X-Forwarded-For": "198.51.100.2"})
        # from an address not trusted, the header is the client's own say: not believed
        spoofed = [
            d.get(source="127.0.0.2", headers={"X-Forwarded-For": f"198.51.100.{10 + i}"})
            for i in range(3)
        ]
    assert via_proxy == [200, 200, 429]
    assert neighbour.status_code == 200
    assert get_token_payload(token(neighbour))["client"] == "198.51.100.2"  # the API is told
    assert [r.status_code for r in spoofed] == [200, 200, 429]
    assert get_token_payload(token(spoofed[0]))["client"] == "127.0.0.2"


async def test_page_loads_beyond_the_build_line_are_refused_at_once(fake_api: FakeApi) -> None:
    settings = {"dashboard_page_rate": "1000", "dashboard_page_burst": "1000"}
    with dashboard(fake_api, dashboard_max_pending_pages="2", **settings) as d:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            answers = await asyncio.gather(*(client.get(f"{d.base}/") for _ in range(40)))
        busy = [a for a in answers if a.status_code == 503]
        built = [a for a in answers if a.status_code == 200]
        assert len(busy) + len(built) == 40
        assert busy and built, [a.status_code for a in answers]
        for answer in busy:
            assert_notice(answer, 503, "busy")
        refusals = d.metric("stockstreamer_dashboard_pages_refused_total", {"reason": "busy"})
        assert refusals == len(busy)
        assert d.metric("stockstreamer_dashboard_unused_sessions") == len(built)


async def test_only_sessions_with_an_open_websocket_count_against_the_cap(
    fake_api: FakeApi,
) -> None:
    with dashboard(fake_api, dashboard_max_sessions="1", dashboard_page_burst="20") as d:
        bare = [d.get() for _ in range(3)]  # pages that never connect take no place
        assert [PAGE_TITLE in page.text for page in bare] == [True, True, True]
        async with d.websocket(token(bare[0])):
            d.wait_metric("stockstreamer_dashboard_connected_sessions", 1)
            assert_notice(d.get(), 503, "sessions")
        d.wait_metric("stockstreamer_dashboard_connected_sessions", 0)
        assert PAGE_TITLE in d.get().text
        refusals = d.metric("stockstreamer_dashboard_pages_refused_total", {"reason": "sessions"})
        assert refusals == 1


async def test_a_websocket_cannot_make_up_its_own_session(fake_api: FakeApi) -> None:
    made_up = generate_jwt_token(generate_session_id(signed=False), signed=False)
    with dashboard(fake_api) as d:
        with pytest.raises((InvalidStatus, ConnectionClosed)):
            async with d.websocket(made_up) as ws:
                await ws.recv()  # a refused token is closed before any message
        assert d.metric("stockstreamer_dashboard_unused_sessions") == 0  # nothing was built


async def test_a_websocket_message_over_the_limit_closes_the_connection(
    fake_api: FakeApi,
) -> None:
    with dashboard(fake_api) as d:
        async with d.websocket(token(d.get())) as ws:
            await ack(ws)
            await ws.send("x" * 100_000)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # too big


async def ack(ws: ClientConnection) -> None:
    """Bokeh's first message on a new connection: header, metadata, content frames."""
    header = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert header["msgtype"] == "ACK"
    for _ in range(2):
        await asyncio.wait_for(ws.recv(), 10)


def test_unused_sessions_expire_soon_and_are_collected_together(fake_api: FakeApi) -> None:
    settings = {"dashboard_page_rate": "1000", "dashboard_page_burst": "1000"}
    with dashboard(fake_api, dashboard_unused_session_seconds="1", **settings) as d:
        full = {"generation": "2"}
        before = d.metric("python_gc_collections_total", full)
        assert before is not None
        for _ in range(20):
            assert d.get().status_code == 200
        d.wait_metric("stockstreamer_dashboard_unused_sessions", 0, timeout=10)
        time.sleep(2)  # the collection Bokeh asked for comes a moment after the last discard
        collections = (d.metric("python_gc_collections_total", full) or 0) - before
        print(f"full collections while 20 sessions came and went: {collections:.0f}")
        # Bokeh collects once per discarded document (twice when the document has session
        # hooks), each a scan of everything alive: here one per batch of discards
        assert 1 <= collections <= 10


def test_a_request_body_is_refused_before_it_is_read(fake_api: FakeApi) -> None:
    with dashboard(fake_api) as d, socket.create_connection(("127.0.0.1", d.port), 10) as sock:
        # only the head: a server that means to read a megabyte would wait for it
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
