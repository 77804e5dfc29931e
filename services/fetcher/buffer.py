"""A bounded, ordered in-memory buffer that holds ticks until they are committed."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection, Iterable

from services.common.models import Tick


class TickBuffer:
    """FIFO of ticks; past `capacity` the oldest are dropped and counted."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[Tick] = deque()
        self._nonempty = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, ticks: Iterable[Tick]) -> int:
        """Append ticks in order; returns how many old ticks were evicted to make room."""
        self._items.extend(ticks)
        return self._trim()

    def take(self, n: int) -> list[Tick]:
        """Remove and return up to `n` of the oldest ticks."""
        count = min(n, len(self._items))
        batch = [self._items.popleft() for _ in range(count)]
        if not self._items:
            self._nonempty.clear()
        return batch

    def requeue(self, batch: list[Tick]) -> int:
        """Put a batch that failed to commit back at the front, keeping order."""
        self._items.extendleft(reversed(batch))
        return self._trim()

    def discard(self, symbols: Collection[str]) -> int:
        """Drop the ticks of `symbols` (no longer wanted); returns how many."""
        kept = [t for t in self._items if t.symbol not in symbols]
        dropped = len(self._items) - len(kept)
        if dropped:
            self._items = deque(kept)
            if not self._items:
                self._nonempty.clear()
        return dropped

    async def wait(self, timeout: float) -> bool:
        """Wait until something is buffered; False on timeout."""
        if self._items:
            return True
        try:
            await asyncio.wait_for(self._nonempty.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _trim(self) -> int:
        evicted = 0
        while len(self._items) > self.capacity:
            self._items.popleft()
            evicted += 1
        if self._items:
            self._nonempty.set()
        return evicted
