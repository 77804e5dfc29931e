"""Which alerts a tick fires or re-arms: sorted lines per symbol, never a scan of every alert.

Each symbol keeps four sorted lists: the armed `above` lines, the armed `below` lines, and the
points at which fired ones re-arm (an above alert once the price falls below
line x (1 - rearm%), a below alert once it rises above line x (1 + rearm%)). A tick that fires
nothing costs four comparisons with the ends of those lists, whatever the number of alerts; one
that fires or re-arms k alerts costs a bisection and k moves. Pure: no I/O, no clock.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, NamedTuple

Condition = Literal["above", "below", "change_pct"]


@dataclass(frozen=True, slots=True)
class AlertSpec:
    """What the evaluator needs of an alert."""

    id: int
    symbol: str
    condition: Condition
    value: float
    armed: bool = True


class Firing(NamedTuple):  # a tuple: made once per firing, on the hot path
    """An alert that fired: at `price`, past `line`, on tick `event_id` (None: at arming)."""

    alert_id: int
    price: float
    line: float
    event_id: int | None
    ts: datetime


@dataclass(slots=True)
class Outcome:
    """What evaluation changed, to be stored in one transaction."""

    firings: list[Firing] = field(default_factory=list)
    armed: dict[int, bool] = field(default_factory=dict)  # each changed alert's armed state now
    fired: dict[int, int] = field(default_factory=dict)  # firings per alert

    def __bool__(self) -> bool:
        return bool(self.armed)

    def fire(self, firing: Firing) -> None:
        self.firings.append(firing)
        self.armed[firing.alert_id] = False
        self.fired[firing.alert_id] = self.fired.get(firing.alert_id, 0) + 1

    def rearm(self, alert_id: int) -> None:
        self.armed[alert_id] = True


class _Lines:
    """Keys in ascending order, each with the id of its alert (ties in no particular order)."""

    __slots__ = ("ids", "keys")

    def __init__(self) -> None:
        self.keys: list[float] = []
        self.ids: list[int] = []

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: float, alert_id: int) -> None:
        i = bisect_right(self.keys, key)
        self.keys.insert(i, key)
        self.ids.insert(i, alert_id)

    def remove(self, key: float, alert_id: int) -> None:
        i = bisect_left(self.keys, key)
        while self.ids[i] != alert_id:  # among equal keys; a missing one raises IndexError
            i += 1
        del self.keys[i]
        del self.ids[i]

    def take(self, start: int, stop: int) -> list[tuple[float, int]]:
        """Remove and return the (key, id) pairs from index `start` to `stop`."""
        taken = list(zip(self.keys[start:stop], self.ids[start:stop], strict=True))
        del self.keys[start:stop]
        del self.ids[start:stop]
        return taken


class _Book:
    """One symbol's alerts."""

    __slots__ = ("above", "above_rearm", "below", "below_rearm", "change")

    def __init__(self) -> None:
        self.above = _Lines()  # armed, fire when price >= key (the line)
        self.below = _Lines()  # armed, fire when price <= key
        self.above_rearm = _Lines()  # fired, re-arm when price < key (line x (1 - rearm%))
        self.below_rearm = _Lines()  # fired, re-arm when price > key (line x (1 + rearm%))
        self.change: set[int] = set()  # change_pct alerts: their lines follow the previous close


@dataclass(slots=True)
class _State:
    spec: AlertSpec
    up: bool  # fires on the way up (above, or a change_pct of zero or more)
    line: float | None  # None: a change_pct alert waiting for its symbol's previous close
    armed: bool


class Evaluator:
    """Every active alert's line and armed state, and each symbol's last price seen."""

    def __init__(self, rearm_pct: float) -> None:
        self.down = 1 - rearm_pct / 100  # an above alert re-arms below line x down
        self.up = 1 + rearm_pct / 100  # a below alert re-arms above line x up
        self._alerts: dict[int, _State] = {}
        self._books: dict[str, _Book] = {}
        self._closes: dict[str, float] = {}
        self.last: dict[str, tuple[float, datetime]] = {}  # price and time, per symbol

    def __contains__(self, alert_id: int) -> bool:
        return alert_id in self._alerts

    def __len__(self) -> int:
        return len(self._alerts)

    @property
    def armed(self) -> int:
        """Alerts armed now (a change_pct one waiting for its previous close counts)."""
        return sum(1 for state in self._alerts.values() if state.armed)

    def symbols(self) -> set[str]:
        return set(self._books)

    def clear(self) -> None:
        self._alerts.clear()
        self._books.clear()
        self._closes.clear()
        self.last.clear()

    # -- alerts ----------------------------------------------------------------------------
    def add(self, spec: AlertSpec) -> None:
        """Take an alert in (again: a known id is replaced)."""
        self.remove(spec.id)
        up = spec.condition == "above" or (spec.condition == "change_pct" and spec.value >= 0)
        state = _State(spec, up, self._line(spec), spec.armed)
        self._alerts[spec.id] = state
        book = self._books.setdefault(spec.symbol, _Book())
        if spec.condition == "change_pct":
            book.change.add(spec.id)
        self._place(state)

    def remove(self, alert_id: int) -> bool:
        """Forget an alert; whether it was known."""
        state = self._alerts.pop(alert_id, None)
        if state is None:
            return False
        self._unplace(state)
        book = self._books[state.spec.symbol]
        book.change.discard(alert_id)
        if not (book.above or book.below or book.above_rearm or book.below_rearm or book.change):
            del self._books[state.spec.symbol]
        return True

    def line(self, alert_id: int) -> float | None:
        return self._alerts[alert_id].line

    def is_armed(self, alert_id: int) -> bool:
        return self._alerts[alert_id].armed

    def set_previous_close(self, symbol: str, close: float | None) -> None:
        """A symbol's previous close: its change_pct alerts' lines move with it."""
        if close is None or not close > 0:
            changed = self._closes.pop(symbol, None) is not None
        else:
            changed = self._closes.get(symbol) != close
            self._closes[symbol] = close
        book = self._books.get(symbol)
        if not changed or book is None:
            return
        for alert_id in book.change:
            state = self._alerts[alert_id]
            self._unplace(state)
            state.line = self._line(state.spec)
            self._place(state)

    def check(self, alert_id: int, out: Outcome) -> None:
        """Fire an armed alert at once if the last price seen is already past its line."""
        state = self._alerts.get(alert_id)
        if state is None or not state.armed or state.line is None:
            return
        quote = self.last.get(state.spec.symbol)
        if quote is None:
            return
        price, ts = quote
        if price >= state.line if state.up else price <= state.line:
            self._unplace(state)
            state.armed = False
            self._place(state)
            out.fire(Firing(alert_id, price, state.line, None, ts))

    def check_all(self, out: Outcome) -> None:
        """`check` every alert (after loading them all)."""
        for alert_id in list(self._alerts):
            self.check(alert_id, out)

    # -- ticks -----------------------------------------------------------------------------
    def tick(self, symbol: str, price: float, ts: datetime, event_id: int, out: Outcome) -> None:
        """Evaluate one live tick: fire what it crosses, re-arm what it has come back past."""
        self.last[symbol] = (price, ts)
        book = self._books.get(symbol)
        if book is None:
            return
        above = book.above
        if above.keys and price >= above.keys[0]:
            for line, alert_id in above.take(0, bisect_right(above.keys, price)):
                self._alerts[alert_id].armed = False
                book.above_rearm.add(line * self.down, alert_id)
                out.fire(Firing(alert_id, price, line, event_id, ts))
        below = book.below
        if below.keys and price <= below.keys[-1]:
            for line, alert_id in below.take(bisect_left(below.keys, price), len(below)):
                self._alerts[alert_id].armed = False
                book.below_rearm.add(line * self.up, alert_id)
                out.fire(Firing(alert_id, price, line, event_id, ts))
        rearm = book.above_rearm
        if rearm.keys and price < rearm.keys[-1]:
            for _, alert_id in rearm.take(bisect_right(rearm.keys, price), len(rearm)):
                state = self._alerts[alert_id]
                state.armed = True
                above.add(state.line, alert_id)  # type: ignore[arg-type]  # placed: has a line
                out.rearm(alert_id)
        rearm = book.below_rearm
        if rearm.keys and price > rearm.keys[0]:
            for _, alert_id in rearm.take(0, bisect_left(rearm.keys, price)):
                state = self._alerts[alert_id]
                state.armed = True
                below.add(state.line, alert_id)  # type: ignore[arg-type]  # placed: has a line
                out.rearm(alert_id)

    # -- placement -------------------------------------------------------------------------
    def _line(self, spec: AlertSpec) -> float | None:
        if spec.condition != "change_pct":
            return spec.value
        close = self._closes.get(spec.symbol)
        return None if close is None else close * (1 + spec.value / 100)

    def _lines_of(self, state: _State) -> tuple[_Lines, float] | None:
        """The list an alert sits in now, and its key there (None: nowhere, no line yet)."""
        if state.line is None:
            return None
        book = self._books[state.spec.symbol]
        if state.up:
            return (
                (book.above, state.line)
                if state.armed
                else (
                    book.above_rearm,
                    state.line * self.down,
                )
            )
        return (book.below, state.line) if state.armed else (book.below_rearm, state.line * self.up)

    def _place(self, state: _State) -> None:
        found = self._lines_of(state)
        if found is not None:
            found[0].add(found[1], state.spec.id)

    def _unplace(self, state: _State) -> None:
        found = self._lines_of(state)
        if found is not None:
            found[0].remove(found[1], state.spec.id)
