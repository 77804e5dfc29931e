"""Polling helpers for conditions that become true in another process or task."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], object | Awaitable[object]],
    timeout: float = 10.0,
    message: str = "",
    interval: float = 0.02,
) -> None:
    """Wait until `check()` (sync or async) is truthy; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, message or "condition not met in time"
        await asyncio.sleep(interval)
