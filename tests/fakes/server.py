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

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.utils.loopback import LoopbackServer

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
        self._server = LoopbackServer(self.app, "fake vendor")
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
        self.url = await self._server.start()
        return self

    async def stop(self) -> None:
        await self._server.stop()


def json_response(data: Any, status: int = 200) -> Response:
    return JSONResponse(data, status)
