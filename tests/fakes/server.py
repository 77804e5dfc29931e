"""A scriptable fake vendor: a real HTTP server on a loopback port, recording every request."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.utils.waiting import eventually

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> Any:
    """A vendor response as the vendor documents it (JSON fixtures are parsed)."""
    text = (FIXTURES / name).read_text()
    return json.loads(text) if name.endswith(".json") else text


@dataclass
class Fault:
    """A scripted answer that replaces the normal one for the next request to a path."""

    status: int = 200
    body: str | bytes = ""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (longer than the client timeout: a timeout)

    @classmethod
    def json(cls, data: Any, status: int = 200, **kw: Any) -> Fault:
        return cls(status, json.dumps(data), **kw)

    @classmethod
    def html(cls, status: int = 200) -> Fault:
        return cls(status, fixture("error_page.html"), "text/html; charset=utf-8")


@dataclass
class Seen:
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    at: float  # time.monotonic()


Handler = Callable[[Request], Response]


class FakeVendor:
    """Routes GET paths to handlers; `script()` queues faults; `requests` records everything."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.requests: list[Seen] = []
        self.faults: dict[str, deque[Fault]] = defaultdict(deque)
        self.routes = routes
        self.app = Starlette(routes=[Route(p, self._endpoint, methods=["GET"]) for p in routes])
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    def script(self, path: str, *faults: Fault) -> None:
        self.faults[path].extend(faults)

    def calls(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    async def _endpoint(self, request: Request) -> Response:
        path = request.url.path
        self.requests.append(
            Seen(path, dict(request.query_params), dict(request.headers), time.monotonic())
        )
        if self.faults[path]:
            fault = self.faults[path].popleft()
            if fault.delay:
                await asyncio.sleep(fault.delay)
            return Response(fault.body, fault.status, fault.headers, media_type=fault.content_type)
        return self.routes[path](request)

    async def start(self) -> FakeVendor:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_level="error", lifespan="off", ws="none"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        server = self._server
        await eventually(lambda: server.started, timeout=10, message="fake vendor did not start")
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task


def json_response(data: Any, status: int = 200) -> Response:
    return JSONResponse(data, status)
