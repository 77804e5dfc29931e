"""The evaluator: lines crossed, fired once, re-armed past the hysteresis band, moved with the
previous close."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from services.alerts.evaluator import AlertSpec, Condition, Evaluator, Outcome

TS = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)


def run(ev: Evaluator, symbol: str, prices: list[float], first_id: int = 1) -> list[Outcome]:
    """One Outcome per tick."""
    outcomes = []
    for i, price in enumerate(prices):
        out = Outcome()
        ev.tick(symbol, price, TS, first_id + i, out)
        outcomes.append(out)
    return outcomes


def fired(outcomes: list[Outcome]) -> list[tuple[int, int | None]]:
    """(alert id, tick event id) of every firing."""
    return [(f.alert_id, f.event_id) for out in outcomes for f in out.firings]


def test_above_fires_at_the_line_once_and_below_mirrors_it() -> None:
    ev = Evaluator(rearm_pct=0.2)
    ev.add(AlertSpec(1, "AAPL", "above", 200.0))
    ev.add(AlertSpec(2, "AAPL", "below", 190.0))
    outs = run(ev, "AAPL", [195.0, 199.99, 200.0, 201.0, 195.0, 190.0, 189.0])
    assert fired(outs) == [(1, 3), (2, 6)]
    firing = outs[2].firings[0]
    assert (firing.price, firing.line, firing.ts) == (200.0, 200.0, TS)
    assert outs[2].armed == {1: False} and outs[2].fired == {1: 1}


def test_other_symbols_ticks_fire_nothing() -> None:
    ev = Evaluator(rearm_pct=0.2)
    ev.add(AlertSpec(1, "AAPL", "above", 10.0))
    assert fired(run(ev, "MSFT", [500.0])) == []
    assert ev.last["MSFT"] == (500.0, TS)


def test_rearms_only_past_the_band_so_hovering_does_not_flood() -> None:
    ev = Evaluator(rearm_pct=0.2)
    ev.add(AlertSpec(1, "AAPL", "above", 200.0))
    # hovering around the line, inside 0.2 % (re-arm below 199.6): one firing only
    hover = [200.1, 199.9, 200.05, 199.7, 200.2, 199.61, 200.3] * 20
    outs = run(ev, "AAPL", hover)
    assert fired(outs) == [(1, 1)]
    # back past the band re-arms (stored as armed), the next crossing fires again
    outs = run(ev, "AAPL", [199.5, 199.8, 200.0], first_id=1000)
    assert outs[0].armed == {1: True}
    assert fired(outs) == [(1, 1002)]


def test_below_rearms_above_its_band() -> None:
    ev = Evaluator(rearm_pct=1.0)
    ev.add(AlertSpec(7, "NVDA", "below", 100.0))
    outs = run(ev, "NVDA", [99.0, 100.5, 100.9, 99.9, 101.1, 100.0])
    assert fired(outs) == [(7, 1), (7, 6)]
    assert outs[4].armed == {7: True}


def test_one_tick_may_fire_and_rearm_many() -> None:
    ev = Evaluator(rearm_pct=0.0)
    for i in range(1, 11):
        ev.add(AlertSpec(i, "GE", "above", 100.0 + i))
    outs = run(ev, "GE", [105.5])
    assert sorted(a for a, _ in fired(outs)) == [1, 2, 3, 4, 5]
    assert ev.armed == 5
    outs = run(ev, "GE", [102.5, 111.0], first_id=10)
    assert sorted(i for i, armed in outs[0].armed.items() if armed) == [3, 4, 5]
    assert sorted(a for a, _ in fired(outs)) == [3, 4, 5, 6, 7, 8, 9, 10]


def test_change_pct_lines_follow_the_previous_close() -> None:
    ev = Evaluator(rearm_pct=0.2)
    ev.add(AlertSpec(1, "AAPL", "change_pct", 5.0))
    ev.add(AlertSpec(2, "AAPL", "change_pct", -3.0))
    # no previous close yet: armed, but no line to cross
    assert fired(run(ev, "AAPL", [1000.0, 1.0])) == []
    assert ev.line(1) is None and ev.armed == 2
    ev.set_previous_close("AAPL", 100.0)
    assert ev.line(1) == pytest.approx(105.0) and ev.line(2) == pytest.approx(97.0)
    outs = run(ev, "AAPL", [104.9, 105.0, 98.0, 96.9], first_id=10)
    assert fired(outs) == [(1, 11), (2, 13)]
    # a new day: the lines move, armed or not
    ev.set_previous_close("AAPL", 200.0)
    assert ev.line(1) == pytest.approx(210.0) and ev.line(2) == pytest.approx(194.0)
    outs = run(ev, "AAPL", [200.0, 211.0], first_id=20)
    assert outs[0].armed == {2: True}  # 1 re-armed at 98 already
    assert fired(outs) == [(1, 21)]


def test_a_new_alert_whose_condition_holds_fires_at_once() -> None:
    ev = Evaluator(rearm_pct=0.2)
    run(ev, "AAPL", [210.0])
    ev.add(AlertSpec(1, "AAPL", "above", 200.0))
    ev.add(AlertSpec(2, "AAPL", "below", 200.0))
    ev.add(AlertSpec(3, "MSFT", "above", 1.0))  # no price seen: nothing to check against
    out = Outcome()
    ev.check_all(out)
    assert [(f.alert_id, f.event_id, f.price) for f in out.firings] == [(1, None, 210.0)]
    assert not ev.is_armed(1) and ev.is_armed(2) and ev.is_armed(3)
    # fired at arming: not again on the next tick
    assert fired(run(ev, "AAPL", [211.0])) == []


def test_a_disarmed_alert_loads_disarmed_and_removal_forgets_it() -> None:
    ev = Evaluator(rearm_pct=0.2)
    ev.add(AlertSpec(1, "AAPL", "above", 200.0, armed=False))
    ev.add(AlertSpec(2, "AAPL", "above", 200.0))
    out = run(ev, "AAPL", [205.0])
    assert fired(out) == [(2, 1)]
    assert ev.remove(2) and not ev.remove(2)
    assert ev.symbols() == {"AAPL"}
    outs = run(ev, "AAPL", [150.0, 205.0], first_id=5)
    assert fired(outs) == [(1, 6)]
    assert ev.remove(1)
    assert ev.symbols() == set() and len(ev) == 0


def test_matches_a_scan_of_every_alert() -> None:
    """The sorted lines decide exactly what checking each alert's own state would."""
    rnd = random.Random(7)
    rearm = 0.2
    ev = Evaluator(rearm_pct=rearm)
    alerts: dict[int, tuple[Condition, float]] = {}
    armed: dict[int, bool] = {}
    for i in range(1, 301):
        cond: Condition = rnd.choice(["above", "below"])
        line = round(rnd.uniform(90, 110), 2)
        ev.add(AlertSpec(i, "AAPL", cond, line))
        alerts[i] = (cond, line)
        armed[i] = True
    price = 100.0
    for event_id in range(1, 3001):
        price = max(1.0, price * (1 + rnd.gauss(0, 0.004)))
        out = Outcome()
        ev.tick("AAPL", price, TS, event_id, out)
        expected_fired, expected_rearmed = set(), set()
        for i, (cond, line) in alerts.items():
            if armed[i] and (price >= line if cond == "above" else price <= line):
                expected_fired.add(i)
                armed[i] = False
            elif not armed[i] and (
                price < line * (1 - rearm / 100)
                if cond == "above"
                else price > line * (1 + rearm / 100)
            ):
                expected_rearmed.add(i)
                armed[i] = True
        assert {f.alert_id for f in out.firings} == expected_fired
        assert {i for i, a in out.armed.items() if a} == expected_rearmed
