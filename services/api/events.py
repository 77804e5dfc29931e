"""Server-Sent Event frames, encoded once per distinct subscription, and one stream's queue."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel
from starlette.types import Send

from services.common.contract import AlertFiring, HistoryPayload, Market, PricePayload, Stock

log = logging.getLogger(__name__)

SLOW = "slow"  # cut: it fell too far behind
SHUTDOWN = "shutdown"  # ended cleanly: the process is stopping
GONE = "gone"  # its client disconnected


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


@dataclass(frozen=True, slots=True)
class Chunk:
    """Bytes ready for a stream's socket: one batch's frames for one subscription.

    Every stream of a subscription is handed the very same object.
    """

    data: bytes
    notified: float | None = None  # the commit notification of the live prices it carries


HEARTBEAT = Chunk(b": heartbeat\n\n")


def price_frame(
    symbol: str, ts_ms: int, price: float, event_id: int, notified: float | None = None
) -> Frame:
    data = encode("price", PricePayload(symbol=symbol, ts=ts_ms, price=price), event_id)
    return Frame("price", data, (symbol,), event_id, notified=notified)


def history_frame(payload: HistoryPayload) -> Frame:
    return Frame("history", encode("history", payload), tuple(payload.symbols), history=payload)


def stock_frame(stock: Stock) -> Frame:
    """A `stock` event, for the streams of its symbol (and those of every symbol)."""
    return Frame("stock", encode("stock", stock), (stock.symbol,))


def alert_frame(firing: AlertFiring) -> Frame:
    """An `alert` event, for every stream whatever its symbols; no id, so resume is untouched."""
    return Frame("alert", encode("alert", firing))


def market_frame(market: Market) -> Frame:
    """A `market` event, for every stream whatever its symbols; no id, so resume is untouched."""
    return Frame("market", encode("market", market))


def render(
    frames: Sequence[Frame], symbols: frozenset[str] | None, after: int | None = None
) -> tuple[Chunk | None, Counter[str]]:
    """The frames of a batch meant for streams of `symbols`, skipping price events up to `after`.

    None when none are; with the events it holds, counted by type.
    """
    out: list[bytes] = []
    sent: Counter[str] = Counter()
    notified = None
    for frame in frames:
        if after is not None and frame.event == "price" and frame.event_id is not None:
            if frame.event_id <= after:
                continue
        if symbols is None or not frame.symbols:
            out.append(frame.data)
        elif frame.history is not None:
            wanted = [s for s in frame.symbols if s in symbols]
            if not wanted:
                continue
            out.append(encode("history", frame.history.model_copy(update={"symbols": wanted})))
        elif frame.symbols[0] in symbols:
            out.append(frame.data)
        else:
            continue
        sent[frame.event] += 1
        if notified is None:
            notified = frame.notified
    return (Chunk(b"".join(out), notified) if out else None), sent


class Unfinished:
    """A write that found its socket full: the stream's own task finishes it."""

    __slots__ = ("write", "waiting")

    def __init__(self, write: Coroutine[Any, Any, None], waiting: Any) -> None:
        self.write = write  # the ASGI send, suspended
        self.waiting = waiting  # what it waits for (room in the socket), as it yielded it

    async def finish(self) -> None:
        """Carry the write on to its end: wait for what it waits for, then let it go on."""
        waiting = self.waiting
        try:
            while True:
                if waiting is None:
                    await asyncio.sleep(0)  # a bare yield: it only let others run
                else:
                    # Not `await waiting`: the write already yielded that future, as a task's
                    # coroutine does; this task only waits for it to be done.
                    await asyncio.wait([waiting])
                waiting = self.write.send(None)
        except StopIteration:
            pass
        finally:
            self.write.close()  # nothing once it has ended; if cancelled, it is abandoned


class Subscriber:
    """One stream: what the listener hands it, never waiting for it.

    Until its resume point is known (`resume`), it queues whole batches: which of their live
    prices it must skip is decided then. Once its writer has sent what came first (`go_live`),
    each chunk is written to its socket at once, from the fan-out itself, while nothing is
    queued: no task to wake, little more than the socket write. An ASGI send is a coroutine
    that ends without suspending unless the socket is full: then the stream's own task finishes
    it (`next_write`), and what comes meanwhile is queued behind it, up to `capacity` chunks.
    """

    __slots__ = (
        "symbols",
        "capacity",
        "after",
        "pending",
        "closed",
        "writer",
        "sending",
        "cut",
        "fresh",
        "idle",
        "_send",
        "_queue",
        "_waiter",
        "_loop",
    )

    def __init__(self, symbols: frozenset[str] | None, capacity: int) -> None:
        self.symbols = symbols
        self.capacity = capacity
        # Live ticks up to this id reached the client another way (replay, or before it came).
        self.after: int | None = None
        self.pending = True  # its resume point is not known yet
        self.closed: str | None = None
        self.writer: asyncio.Task[None] | None = None  # the stream's own task, once it runs
        self.sending = False  # whether that task is inside a write (which a full socket blocks)
        self.cut = False  # the task was cancelled, mid-write, to drop the connection
        self.fresh = False  # handed something since the broadcaster last looked (heartbeats)
        self.idle = False  # live and nothing queued: chunks are written at once
        self._send: Send | None = None
        # rarely used (a socket full, or not live yet): a list, not a deque's 64-slot block
        self._queue: list[Chunk | Sequence[Frame] | Unfinished] = []
        self._waiter: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()

    def offer(self, item: Chunk | Sequence[Frame]) -> bool:
        """Write a chunk now if the stream is idle, else queue it (or, while pending, a batch);
        False when the queue is full (the caller then cuts the stream)."""
        if self.closed:
            return True
        self.fresh = True
        if self.idle:
            self._write(cast(Chunk, item))  # never a batch: it is live
            return True
        if len(self._queue) >= self.capacity:
            return False
        self._queue.append(item)
        self._wake()
        return True

    def _write(self, chunk: Chunk) -> None:
        """Hand a chunk to the socket; what cannot be written at once goes to the stream's task
        (and the stream is no longer idle)."""
        assert self._send is not None  # noqa: S101 - idle, so live
        message = {"type": "http.response.body", "body": chunk.data, "more_body": True}
        write = cast(Coroutine[Any, Any, None], self._send(message))  # ASGI sends are coroutines
        try:
            waiting = write.send(None)  # run it now: it ends here unless the socket is full
        except StopIteration:
            return
        except Exception:
            log.exception("stream write failed; ending the stream")
            self.close(GONE)
            return
        self.idle = False
        self._queue.append(Unfinished(write, waiting))
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def resume(self, after: int | None) -> Counter[str]:
        """Its resume point is known: encode the batches queued so far; what they hold."""
        self.after = after
        self.pending = False
        sent: Counter[str] = Counter()
        queued, self._queue = self._queue, []
        for item in queued:
            if isinstance(item, Chunk | Unfinished):
                self._queue.append(item)
                continue
            chunk, counts = render(item, self.symbols, after)
            sent += counts
            if chunk is not None:
                self._queue.append(chunk)
        return sent

    def go_live(self, send: Send) -> None:
        """Its writer sent what came first: from now on chunks may go straight to `send`."""
        self._send = send

    def close(self, reason: str) -> None:
        """End the stream: SLOW drops it at once, SHUTDOWN and GONE let it finish cleanly.

        SLOW also drops a stream already ending whose last write is stuck behind a full socket.
        """
        if self.closed is None:
            self.closed = reason
            self.idle = False
            for item in self._queue:  # nothing more is sent, so hold nothing
                if isinstance(item, Unfinished):
                    item.write.close()
            self._queue.clear()
            self._wake()
        if reason == SLOW and self.sending and self.writer is not None and not self.cut:
            self.cut = True
            self.writer.cancel()

    async def next_write(self) -> list[Chunk | Unfinished] | None:
        """What its task must write, in order (waiting while the stream is idle), or None once
        the stream is closed."""
        while not self._queue:
            if self.closed:
                return None
            self.idle = self._send is not None
            self._waiter = self._loop.create_future()
            await self._waiter
        self.idle = False
        items = cast(list[Chunk | Unfinished], self._queue)  # no batches once resumed
        self._queue = []
        return items
