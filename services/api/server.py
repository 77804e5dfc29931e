"""uvicorn's server for one API process, as `python -m services.api` runs it."""

from __future__ import annotations

import socket

import uvicorn

from services.api.listener import Broadcaster

SHUTDOWN_GRACE = 1.0  # seconds a stream gets to finish its last write on shutdown


class ApiServer(uvicorn.Server):
    """uvicorn's server; what the API must do on SIGTERM beyond uvicorn's own shutdown goes here."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """End every event stream first: uvicorn waits for open responses, and streams never end
        by themselves."""
        broadcaster = streams_of(self.config.loaded_app)
        if broadcaster is not None:
            await broadcaster.end_streams(SHUTDOWN_GRACE)
        await super().shutdown(sockets)


def streams_of(app: object) -> Broadcaster | None:
    """The broadcaster of the application uvicorn serves, under whatever middleware wraps it."""
    for _ in range(10):  # no wrapper chain is longer
        state = getattr(app, "state", None)
        if state is not None:
            broadcaster = getattr(state, "broadcaster", None)
            return broadcaster if isinstance(broadcaster, Broadcaster) else None
        app = getattr(app, "app", None)
    return None
