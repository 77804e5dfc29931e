"""A chart's time axis: real time, or open time elapsed when closed hours are collapsed.

With closed hours collapsed, a point's x is the open time (milliseconds) before it in the
window: nights, weekends and holidays take no width. The sessions come from the API
(`GET /api/v1/market/sessions`); the browser maps ticks back with the same table
(`Timeline.args`, read by the axis code in `clock.py`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Sessions = Iterable[tuple[int, int]] | Iterable[list[int]]


@dataclass(frozen=True, slots=True)
class Timeline:
    """Real time (epoch ms) to chart x and back; the identity when no sessions are given."""

    opens: tuple[int, ...] = ()
    closes: tuple[int, ...] = ()
    starts: tuple[int, ...] = ()  # the x of each open: open time before it

    @classmethod
    def collapsed(cls, sessions: Sessions, live_until: int | None = None) -> Timeline:
        """Closed hours removed; `live_until` extends the last session (the market is open)."""
        spans: list[list[int]] = []
        for open_, close in sorted((int(a), int(b)) for a, b in sessions):
            if close <= open_:
                continue
            if spans and open_ <= spans[-1][1]:  # overlapping or touching: one span
                spans[-1][1] = max(spans[-1][1], close)
            else:
                spans.append([open_, close])
        if spans and live_until is not None and live_until > spans[-1][1]:
            spans[-1][1] = live_until
        starts, elapsed = [], 0
        for open_, close in spans:
            starts.append(elapsed)
            elapsed += close - open_
        return cls(tuple(s[0] for s in spans), tuple(s[1] for s in spans), tuple(starts))

    @property
    def collapsing(self) -> bool:
        """Whether x is open time (else it is real time)."""
        return bool(self.opens)

    @property
    def open_ms(self) -> int:
        """Open time of every session."""
        return self.starts[-1] + self.closes[-1] - self.opens[-1] if self.opens else 0

    def x(self, ts: float) -> float:
        """Where a time goes: closed time is clamped to the nearest session's edge."""
        if not self.opens:
            return ts
        i = bisect_right(self.opens, ts) - 1
        if i < 0:
            return 0  # before the first session: at its open
        return self.starts[i] + min(ts, self.closes[i]) - self.opens[i]

    def xs(self, ts: Iterable[float]) -> list[float]:
        return [self.x(t) for t in ts]

    def ts(self, x: float) -> float:
        """The real time at `x` (beyond either end, real time runs on: the range's padding)."""
        if not self.opens:
            return x
        i = max(0, bisect_right(self.starts, x) - 1)
        t = self.opens[i] + x - self.starts[i]
        return t if i == len(self.opens) - 1 else min(t, self.closes[i])

    def span(self, start: float, end: float) -> float:
        """The width of [start, end] on the axis."""
        return self.x(end) - self.x(start)

    def typical_session(self) -> int:
        """The median session's length (a trading day, for the axis's day ticks)."""
        if not self.opens:
            return 0
        lengths = sorted(c - o for o, c in zip(self.opens, self.closes, strict=True))
        return lengths[len(lengths) // 2]

    def args(self) -> dict[str, Any]:
        """The table the browser maps ticks back with."""
        return {
            "opens": list(self.opens),
            "closes": list(self.closes),
            "starts": list(self.starts),
            "day": self.typical_session(),
        }


REAL = Timeline()
