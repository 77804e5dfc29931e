"""A webhook receiver: a real HTTP server on a loopback port that records every POST."""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.utils.loopback import LoopbackServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any  # the JSON payload
    at: float  # time.time()


class Receiver:
    """POST /{path} answers 200 and records the JSON body, or a scripted status first."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.statuses: deque[int] = deque()  # answers for the next requests, then 200
        self.app = Starlette(routes=[Route("/{path:path}", self._hook, methods=["POST"])])
        self._server = LoopbackServer(self.app, "receiver")
        self.url = ""

    async def _hook(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        self.received.append(Received(request.url.path, dict(request.headers), body, time.time()))
        status = self.statuses.popleft() if self.statuses else 200
        return Response("{}", status, media_type="application/json")

    def apprise_url(self, path: str = "hook") -> str:
        """The Apprise URL that posts JSON here."""
        return self.url.replace("http://", "json://", 1) + f"/{path}"

    def firing_ids(self, path: str | None = None) -> list[int]:
        """The firing id of every POST (to `path`), in the order received."""
        return [
            int(r.body["firing_id"]) for r in self.received if path is None or r.path == f"/{path}"
        ]

    async def start(self) -> Receiver:
        self.url = await self._server.start()
        return self

    async def stop(self) -> None:
        await self._server.stop()
