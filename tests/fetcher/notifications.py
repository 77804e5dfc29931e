"""A connection that LISTENs on the fetcher's channels, for tests of what it announces."""

from __future__ import annotations

import asyncio

import asyncpg

CHANNELS = ("prices", "stocks", "history")
MARK = "end_of_notifications"  # a channel of its own, and its one payload


class Notifications:
    """Collects (channel, payload) in delivery order, which is commit order."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    @classmethod
    async def listen(cls, url: str, channels: tuple[str, ...] = CHANNELS) -> Notifications:
        notes = cls(await asyncpg.connect(url))
        for channel in (*channels, MARK):
            await notes.conn.add_listener(channel, notes._received)
        return notes

    def _received(self, _conn: object, _pid: int, channel: str, message: object) -> None:
        payload = str(message)
        self._queue.put_nowait((channel, payload))

    async def next(self, timeout: float = 5.0) -> tuple[str, str]:
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def drain(self) -> list[tuple[str, str]]:
        """Everything committed so far: a marker sent now is delivered after all of it."""
        await self.conn.execute("SELECT pg_notify($1, $1)", MARK)
        received = []
        while (note := await self.next()) != (MARK, MARK):
            received.append(note)
        return received

    async def close(self) -> None:
        await self.conn.close()
