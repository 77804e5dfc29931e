"""A real HTTP server for an ASGI app on a free loopback port, served in the running event loop."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

from tests.utils.waiting import eventually


class LoopbackServer:
    """uvicorn serving `app` on 127.0.0.1 (a port of its own) until stopped."""

    def __init__(self, app: Any, name: str) -> None:
        self.app = app
        self.name = name
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Serve; returns the base URL (http://127.0.0.1:PORT)."""
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_level="error", lifespan="off", ws="none"
        )
        server = self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(server.serve())
        await eventually(lambda: server.started, timeout=10, message=f"{self.name} did not start")
        port = server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None
