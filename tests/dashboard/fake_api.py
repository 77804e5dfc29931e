"""A small, real HTTP server speaking the API contract (REST + SSE), driven by the test."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.runner.embedded_db import free_port


@dataclass
class StreamEvent:
    event: str
    data: dict[str, Any]
    id: int | None = None

    def encode(self) -> str:
        head = f"event: {self.event}\n" + (f"id: {self.id}\n" if self.id is not None else "")
        return head + f"data: {json.dumps(self.data)}\n\n"


@dataclass
class Write:
    """A write the API was sent: what a real one would authorise and act on."""

    method: str
    path: str
    authorization: str | None
    forwarded_for: str | None
    body: Any


@dataclass
class FakeApi:
    """Canned stocks and prices, an SSE stream fed by `push`, and a log of what was asked."""

    stocks: list[dict[str, Any]] = field(default_factory=list)
    series: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[StreamEvent] = field(default_factory=list)
    stream_requests: list[str | None] = field(default_factory=list)
    price_requests: list[dict[str, str]] = field(default_factory=list)
    bars: dict[str, dict[str, Any]] = field(default_factory=dict)
    bar_requests: list[dict[str, str]] = field(default_factory=list)
    forwarded_for: list[str | None] = field(default_factory=list)  # of history requests
    abandoned: int = 0  # history requests whose client went away before the answer
    market: dict[str, Any] | None = None  # GET /api/v1/market (404 while None: an older API)
    sessions: list[list[int]] = field(default_factory=list)  # open intervals, epoch ms
    session_requests: list[dict[str, str]] = field(default_factory=list)
    market_requests: int = 0
    fail_prices: bool = False
    writes: list[Write] = field(default_factory=list)
    # The next writes' answers (status, JSON body), oldest first; then 202 (POST) or 204 (DELETE).
    write_answers: list[tuple[int, dict[str, Any] | None]] = field(default_factory=list)
    delay: float = 0.0  # seconds every history answer takes
    port: int = field(default_factory=free_port)
    _drops: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def push(self, event: str, data: dict[str, Any], id: int | None = None) -> None:  # noqa: A002
        self.events.append(StreamEvent(event, data, id))

    def drop_streams(self) -> None:
        """End every open stream, as an API restart behind a proxy would."""
        self._drops += 1

    # -- the app -----------------------------------------------------------------------------
    async def _stocks(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._write(request, 202)
        return JSONResponse(self.stocks)

    async def _write(self, request: Request, status: int) -> Response:
        raw = await request.body()
        self.writes.append(
            Write(
                request.method,
                request.url.path,
                request.headers.get("authorization"),
                request.headers.get("x-forwarded-for"),
                json.loads(raw) if raw else None,
            )
        )
        if self.write_answers:
            status, body = self.write_answers.pop(0)
            return JSONResponse(body, status_code=status)
        if status == 204:
            return Response(status_code=204)
        symbol = self.writes[-1].body["symbol"]
        nothing = dict.fromkeys(("name", "logo_url", "week52_high", "week52_low"))
        return JSONResponse({"symbol": symbol, **nothing, "state": "pending"}, status_code=status)

    async def _unstock(self, request: Request) -> Response:
        return await self._write(request, 204)

    async def _served(self, request: Request) -> bool:
        """Take `delay` over a history answer; False when the client leaves meanwhile."""
        self.forwarded_for.append(request.headers.get("x-forwarded-for"))
        deadline = time.monotonic() + self.delay
        while time.monotonic() < deadline:
            if await request.is_disconnected():
                self.abandoned += 1
                return False
            await asyncio.sleep(0.01)
        return True

    async def _prices(self, request: Request) -> Response:
        self.price_requests.append(dict(request.query_params))
        if not await self._served(request):
            return Response(status_code=499)
        if self.fail_prices:
            return JSONResponse({"detail": "boom"}, status_code=503)
        symbols = request.query_params.get("symbols", "").split(",")
        series = [
            self.series.get(
                s, {"symbol": s, "ts": [], "price": [], "downsampled": False, "bucket_ms": None}
            )
            for s in symbols
        ]
        return JSONResponse({"start": 0, "end": 0, "max_points": 0, "series": series})

    async def _bars(self, request: Request) -> Response:
        self.bar_requests.append(dict(request.query_params))
        if not await self._served(request):
            return Response(status_code=499)
        symbols = request.query_params.get("symbols", "").split(",")
        empty: dict[str, list[float]] = {k: [] for k in ("ts", "open", "high", "low", "close")}
        empty["ticks"] = []
        series = [self.bars.get(s, {"symbol": s, **empty}) for s in symbols]
        body = {"start": 0, "end": 0, "interval": "1m", "interval_ms": 60_000, "series": series}
        return JSONResponse(body)

    async def _market(self, request: Request) -> Response:
        self.market_requests += 1
        if self.market is None:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return JSONResponse(self.market)

    async def _sessions(self, request: Request) -> Response:
        self.session_requests.append(dict(request.query_params))
        start, end = (int(request.query_params[k]) for k in ("start", "end"))
        clipped = [[max(a, start), min(b, end)] for a, b in self.sessions if a < end and b > start]
        market = self.market or {"calendar": "24/7", "timezone": "UTC"}
        body = {
            "start": start,
            "end": end,
            "calendar": market["calendar"],
            "timezone": market["timezone"],
            "sessions": clipped,
        }
        return JSONResponse(body)

    async def _stream(self, request: Request) -> Response:
        last = request.headers.get("last-event-id")
        self.stream_requests.append(last)
        drops = self._drops
        after = int(last) if last else None

        async def body() -> AsyncIterator[str]:
            # A fresh connection sees only new events; a resumed one gets the replay after its id.
            cursor = 0 if after is not None else len(self.events)
            while self._drops == drops and not (self._server and self._server.should_exit):
                while cursor < len(self.events):
                    event = self.events[cursor]
                    cursor += 1
                    if after is None or event.id is None or event.id > after:
                        yield event.encode()
                await asyncio.sleep(0.01)

        return StreamingResponse(body(), media_type="text/event-stream")

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/v1/stocks", self._stocks, methods=["GET", "POST"]),
                Route("/api/v1/stocks/{symbol}", self._unstock, methods=["DELETE"]),
                Route("/api/v1/prices", self._prices),
                Route("/api/v1/bars", self._bars),
                Route("/api/v1/market", self._market),
                Route("/api/v1/market/sessions", self._sessions),
                Route("/api/v1/stream", self._stream),
            ]
        )

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeApi:
        config = uvicorn.Config(
            self.app(),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            timeout_graceful_shutdown=1,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake API did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._server = self._thread = None
