"""Locust users for the capacity scenario: REST readers over every endpoint, and SSE streams.

`python -m bench.capacity` runs the REST users (its streams are the lean clients of
bench/capacity/streams.py: a locust user per stream costs more CPU than the API spends on it);
by hand, both:
    .venv/capacity/bin/locust -f bench/capacity/locustfile.py -H http://127.0.0.1:8000
Settings from the environment: CAPACITY_STREAMS (SSE clients, 1000), CAPACITY_REST_RATE
(requests per second per REST user, 1.0), CAPACITY_SYMBOLS (the tracked symbols).
"""

from __future__ import annotations

import json
import os
import random
import time
from datetime import UTC, datetime, timedelta

from locust import FastHttpUser, constant, events, task
from locust.env import Environment
from locust.stats import StatsEntry

SYMBOLS = os.environ.get("CAPACITY_SYMBOLS", "GE,AMZN,NVDA,INTC,AAPL,NFLX").split(",")
LAG_SAMPLE = 0.1  # share of received chunks whose events' lag is recorded (all would cost CPU)
received_events = 0  # price events read by every stream, since the stats were last reset


def since(delta: timedelta) -> str:
    return (datetime.now(UTC) - delta).isoformat(timespec="seconds").replace("+00:00", "Z")


class RestUser(FastHttpUser):
    """A reader mixing every REST endpoint about as the dashboard and scripts do."""

    weight = 1
    rate = float(os.environ.get("CAPACITY_REST_RATE", "1.0"))

    def wait_time(self) -> float:
        """Exponential pauses: together the users are a Poisson stream of requests.

        A fixed pace (constant_throughput) keeps every user on the phase it was spawned at, so
        users spawned together send their requests together, second after second: bursts that
        measure a queue of the load generator's making rather than the API.
        """
        return random.expovariate(self.rate)  # noqa: S311 - load shape, not a secret

    def on_start(self) -> None:
        """A first pause too: users spawned together would otherwise all ask at once."""
        self.wait()

    def _symbol(self) -> str:
        return random.choice(SYMBOLS)  # noqa: S311 - load mix, not a secret

    @task(3)
    def stocks(self) -> None:
        self.client.get("/api/v1/stocks")

    @task(2)
    def stock(self) -> None:
        self.client.get(f"/api/v1/stocks/{self._symbol()}", name="/api/v1/stocks/{symbol}")

    @task(1)
    def logo(self) -> None:
        self.client.get(
            f"/api/v1/stocks/{self._symbol()}/logo", name="/api/v1/stocks/{symbol}/logo"
        )

    @task(1)
    def highlow(self) -> None:
        self.client.get(
            f"/api/v1/stocks/{self._symbol()}/highlow", name="/api/v1/stocks/{symbol}/highlow"
        )

    @task(3)
    def prices_hour(self) -> None:
        params = {
            "symbols": ",".join(SYMBOLS),
            "start": since(timedelta(hours=1)),
            "max_points": 1000,
        }
        self.client.get("/api/v1/prices", params=params, name="/api/v1/prices (1 h, all)")

    @task(1)
    def prices_day(self) -> None:
        params = {"symbols": self._symbol(), "start": since(timedelta(days=1)), "max_points": 1000}
        self.client.get("/api/v1/prices", params=params, name="/api/v1/prices (1 day, one)")

    @task(3)
    def latest(self) -> None:
        self.client.get("/api/v1/prices/latest", params={"symbols": ",".join(SYMBOLS)})

    @task(1)
    def health(self) -> None:
        self.client.get("/healthz")
        self.client.get("/readyz")

    @task(1)
    def metrics(self) -> None:
        self.client.get("/metrics")

    @task(1)
    def openapi(self) -> None:
        self.client.get("/openapi.json")


class StreamUser(FastHttpUser):
    """One SSE client for the whole run; reports its opening and a sample of events' lag."""

    fixed_count = int(os.environ.get("CAPACITY_STREAMS", "1000"))
    wait_time = constant(1)  # before reconnecting, should the API end the stream
    network_timeout = 45.0  # heartbeats come every 15 s

    @task
    def stream(self) -> None:
        with self.client.get(
            "/api/v1/stream", stream=True, name="/api/v1/stream (open)", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
        # Whatever the socket has, parsed in C (the HTTP parser de-chunks it into the body
        # buffer): a frame-by-frame readline costs locust more CPU than the API spends sending.
        raw = response._response  # geventhttpclient's response, as iter_content uses it
        global received_events
        body = raw._body_buffer
        while not raw.message_complete and raw._sock is not None:
            data = raw._sock.recv(65536)
            if not data:
                break
            raw.feed(data)
            end = body.rfind(b"\n\n")
            if end < 0:
                continue
            chunk = bytes(body[: end + 2])
            del body[: end + 2]
            # price events are the frames with an id (history frames and heartbeats have none)
            events = chunk.count(b"\nid: ") + chunk.startswith(b"id: ")
            received_events += events
            if not events or random.random() >= LAG_SAMPLE:  # noqa: S311
                continue
            # A sample of whole chunks: every price event of one, as each arrived at this time.
            # Its provider time is when the simulator made the tick: fetcher, database, API, socket.
            received = time.time()
            for frame in chunk.split(b"\n\n"):
                if not frame.startswith(b"id: "):
                    continue
                ts = json.loads(frame.rsplit(b"data: ", 1)[1])["ts"]
                self.environment.events.request.fire(
                    request_type="SSE",
                    name="price event: tick time to receipt",
                    response_time=max(0.0, (received - ts / 1000) * 1000),
                    response_length=len(frame),
                    exception=None,
                    context={},
                )
        self.environment.events.request.fire(
            request_type="SSE",
            name="/api/v1/stream (ended by the API)",
            response_time=0,
            response_length=0,
            exception=ConnectionError("stream ended"),
            context={},
        )


@events.spawning_complete.add_listener
def _reset_count(**_kwargs: object) -> None:
    """Count from where locust's --reset-stats starts its statistics."""
    global received_events
    received_events = 0


@events.test_stop.add_listener
def _rest_summary(environment: Environment, **_kwargs: object) -> None:
    """REST requests as one distribution (locust's own total mixes in the streams)."""
    path = os.environ.get("CAPACITY_SUMMARY")
    if not path:
        return
    total = StatsEntry(environment.stats, "REST", "", use_response_times_cache=False)
    for entry in environment.stats.entries.values():
        if entry.method == "GET" and not entry.name.startswith("/api/v1/stream"):
            total.extend(entry)
    seconds = (
        max(total.last_request_timestamp - total.start_time, 1e-9) if total.num_requests else 1
    )
    summary = {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "rps": total.num_requests / seconds,
        "p50": total.get_response_time_percentile(0.5),
        "p99": total.get_response_time_percentile(0.99),
        "events": received_events,
    }
    with open(path, "w") as f:
        json.dump(summary, f)
