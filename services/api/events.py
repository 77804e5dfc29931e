"""Server-Sent Event frames, encoded once and shared by every stream, and one stream's queue."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from services.common.contract import HistoryPayload, Market, PricePayload

SLOW = "slow"
SHUTDOWN = "shutdown"


def encode(event: str, data: BaseModel, event_id: int | None = None) -> bytes:
    """One SSE frame; `data` is its model's JSON, on a single line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data.model_dump_json()}\n\n".encode()


@dataclass(frozen=True, slots=True)
class Frame:
    """An encoded event with what a stream needs to decide whether it is for it."""

    event: str
    data: bytes
    symbols: tuple[str, ...] = ()
    event_id: int | None = None
    history: HistoryPayload | None = None  # re-encoded for streams that want some of its symbols
    notified: float | None = None  # time.monotonic() when its commit was announced, if live


def price_frame(
    symbol: str, ts_ms: int, price: float, event_id: int, notified: float | None = None
) -> Frame:
    data = encode("price", PricePayload(symbol=symbol, ts=ts_ms, price=price), event_id)
    return Frame("price", data, (symbol,), event_id, notified=notified)


def history_frame(payload: HistoryPayload) -> Frame:
    return Frame("history", encode("history", payload), tuple(payload.symbols), history=payload)


def market_frame(market: Market) -> Frame:
    """A `market` event, for every stream whatever its symbols; no id, so resume is untouched."""
    return Frame("market", encode("market", market))


class Subscriber:
    """One stream's bounded queue of shared batches; the listener never waits for it."""

    def __init__(self, symbols: frozenset[str] | None, capacity: int) -> None:
        self.symbols = symbols
        self.capacity = capacity
        # Live ticks up to this id reached the client another way (replay, or before it came).
        self.after: int | None = None
        self.closed: str | None = None
        self.dropped = asyncio.Event()
        self._batches: deque[Sequence[Frame]] = deque()
        self._wakeup = asyncio.Event()

    def offer(self, batch: Sequence[Frame]) -> bool:
        """Queue a batch; False when the queue is full (the caller then cuts the stream)."""
        if self.closed:
            return True
        if len(self._batches) >= self.capacity:
            return False
        self._batches.append(batch)
        self._wakeup.set()
        return True

    def close(self, reason: str) -> None:
        """End the stream: SLOW abandons it at once, SHUTDOWN lets it finish cleanly."""
        if self.closed is None:
            self.closed = reason
            self._batches.clear()  # nothing more is sent, so hold nothing
            self._wakeup.set()
            if reason == SLOW:
                self.dropped.set()

    async def next_batch(self) -> Sequence[Frame] | None:
        """The next batch, or None once the stream is closed."""
        while not self._batches:
            if self.closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._batches.popleft()

    def render(self, frames: Iterable[Frame], sent: Counter[str]) -> bytes:
        """The bytes of the frames meant for this stream, counting them by event type."""
        out: list[bytes] = []
        for frame in frames:
            if frame.event == "price" and self.after is not None and frame.event_id is not None:
                if frame.event_id <= self.after:
                    continue
            if self.symbols is None or not frame.symbols:
                out.append(frame.data)
            elif frame.history is not None:
                wanted = [s for s in frame.symbols if s in self.symbols]
                if not wanted:
                    continue
                out.append(encode("history", frame.history.model_copy(update={"symbols": wanted})))
            elif frame.symbols and frame.symbols[0] in self.symbols:
                out.append(frame.data)
            else:
                continue
            sent[frame.event] += 1
        return b"".join(out)
