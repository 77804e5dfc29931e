"""One back-off policy for every loop that waits out an outage: jittered, doubling, capped."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Waits of `initial` seconds doubling up to `ceiling`, each drawn from its upper half.

    Usage::

        backoff = Backoff(0.1, 2.0)
        while True:
            try:
                await work()
                backoff.reset()
            except OSError:
                await backoff.sleep()
    """

    def __init__(self, initial: float = 0.1, ceiling: float = 2.0) -> None:
        self.initial = initial
        self.ceiling = ceiling
        self.failures = 0

    def next(self) -> float:
        """The wait before the next attempt (and count this failure)."""
        wait = min(self.ceiling, self.initial * 2**self.failures)
        self.failures += 1
        # Jitter, so that clients cut off together do not come back together.
        return float(wait * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not a secret

    async def sleep(self) -> None:
        await asyncio.sleep(self.next())

    def reset(self) -> None:
        """After a success: the next failure waits `initial` again."""
        self.failures = 0
