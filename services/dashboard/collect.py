"""Garbage collection that does not block the event loop once per discarded session.

Bokeh runs a full `gc.collect()` every time it destroys a session's document. A full collection
scans every live object: the process's own (modules, the server: ~100 ms here) and every other
session's. Sessions of page loads that never connected expire together, so discarding a few dozen
of them blocked the event loop for seconds, one full scan each. Two changes, made once at start:

- what exists once the server is loaded is frozen out of all later collections (`gc.freeze`),
- Bokeh's call asks for one collection a moment later instead, which frees every document
  discarded meanwhile at once.
"""

from __future__ import annotations

import asyncio
import gc

import bokeh.document.document as bokeh_document

BATCH_SECONDS = 1.0


class BatchedCollect:
    """Stands in for the `gc` module where Bokeh destroys documents: one collection per batch."""

    def __init__(self, delay: float = BATCH_SECONDS) -> None:
        self.delay = delay
        self.scheduled = False

    def collect(self, generation: int = 2) -> int:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a script): collect now, as Bokeh would
            return gc.collect(generation)
        if not self.scheduled:
            self.scheduled = True
            loop.call_later(self.delay, self._run)
        return 0

    def _run(self) -> None:
        self.scheduled = False
        gc.collect()


def install() -> None:
    """Freeze the objects alive now, and batch Bokeh's collections (call once, when loaded)."""
    gc.collect()
    gc.freeze()
    # The module global its Document.destroy calls `gc.collect()` through.
    bokeh_document.gc = BatchedCollect()  # type: ignore[attr-defined,assignment]
