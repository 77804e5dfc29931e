"""The outage buffer keeps order, bounds memory and drops the oldest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from services.common.models import Tick
from services.fetcher.buffer import TickBuffer

T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


def ticks(n: int, start: int = 0) -> list[Tick]:
    return [Tick("AAPL", T0 + timedelta(seconds=i), Decimal(1)) for i in range(start, start + n)]


def test_take_is_fifo() -> None:
    buffer = TickBuffer(100)
    buffer.put(ticks(10))
    assert buffer.take(4) == ticks(4)
    assert buffer.take(100) == ticks(6, start=4)
    assert len(buffer) == 0


def test_capacity_evicts_oldest() -> None:
    buffer = TickBuffer(5)
    assert buffer.put(ticks(8)) == 3
    assert buffer.take(10) == ticks(5, start=3)


def test_requeue_puts_a_failed_batch_back_in_front() -> None:
    buffer = TickBuffer(100)
    buffer.put(ticks(5))
    batch = buffer.take(3)
    buffer.put(ticks(2, start=5))
    buffer.requeue(batch)
    assert buffer.take(100) == ticks(7)


def test_requeue_past_capacity_drops_the_oldest() -> None:
    buffer = TickBuffer(4)
    buffer.put(ticks(3))
    batch = buffer.take(3)
    buffer.put(ticks(3, start=3))
    assert buffer.requeue(batch) == 2
    assert buffer.take(10) == ticks(4, start=2)


async def test_wait_wakes_on_put() -> None:
    buffer = TickBuffer(10)
    assert not await buffer.wait(0.01)
    buffer.put(ticks(1))
    assert await buffer.wait(0.01)
