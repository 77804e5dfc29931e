"""The time axis: real time, or open time with closed hours collapsed (DST, holidays, live edge)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from services.common.contract import BarSeries
from services.dashboard.candles import BODY, candle_columns
from services.dashboard.shaping import HOUR_MS
from services.dashboard.timeline import REAL, Timeline
from tests.dashboard.conftest import ms, session_table

MINUTE_MS = 60_000
SESSION = 6 * HOUR_MS + 30 * MINUTE_MS  # a regular New York session, 09:30 to 16:00


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_real_time_is_the_identity() -> None:
    assert not REAL.collapsing
    assert REAL.x(1_764_000_000_123) == 1_764_000_000_123
    assert REAL.ts(42.5) == 42.5
    assert REAL.span(10, 70) == 60
    assert Timeline.collapsed([]) == REAL  # a window with no session: shown as it is


def test_a_week_over_a_weekend_takes_only_its_open_time() -> None:
    # Mon 1 Dec 2025 to Mon 8 Dec 2025 noon (UTC): five sessions, a weekend, Monday's morning
    sessions = session_table("XNYS", utc(2025, 12, 1), utc(2025, 12, 8, 17))
    line = Timeline.collapsed(sessions)
    assert len(sessions) == 6 and line.collapsing
    friday_close, monday_open = ms(utc(2025, 12, 5, 21)), ms(utc(2025, 12, 8, 14, 30))
    # the last minute of Friday and the first of Monday are a minute apart, not 65 hours
    assert line.x(monday_open + MINUTE_MS) - line.x(friday_close - MINUTE_MS) == 2 * MINUTE_MS
    assert line.x(monday_open) == line.x(friday_close) == 5 * SESSION
    # the whole window is as wide as its open time
    assert line.span(ms(utc(2025, 12, 1)), ms(utc(2025, 12, 8, 17))) == 5 * SESSION + 2.5 * HOUR_MS
    assert line.open_ms == 5 * SESSION + 2.5 * HOUR_MS
    assert line.typical_session() == SESSION


def test_closed_time_is_clamped_to_the_nearest_session_edge() -> None:
    sessions = session_table("XNYS", utc(2025, 12, 4), utc(2025, 12, 6))
    line = Timeline.collapsed(sessions)
    thursday_close = ms(utc(2025, 12, 4, 21))
    assert line.x(ms(utc(2025, 12, 4, 3))) == 0  # before the first open
    assert line.x(ms(utc(2025, 12, 5, 2))) == line.x(thursday_close) == SESSION  # overnight
    assert line.x(ms(utc(2025, 12, 5, 23))) == 2 * SESSION  # after the last close
    # times back from x: inside sessions exact, past either end running on in real time
    friday_noon = ms(utc(2025, 12, 5, 17))
    assert line.ts(line.x(friday_noon)) == friday_noon
    assert line.ts(SESSION) == ms(utc(2025, 12, 5, 14, 30))  # the day boundary: the next open
    assert line.ts(-HOUR_MS) == ms(utc(2025, 12, 4, 13, 30))
    assert line.ts(2 * SESSION + HOUR_MS) == ms(utc(2025, 12, 5, 22))


def test_sessions_keep_their_length_across_a_dst_change() -> None:
    # New York moves its clocks on Sun 8 Mar 2026: the open is 14:30 UTC before, 13:30 after
    sessions = session_table("XNYS", utc(2026, 3, 5), utc(2026, 3, 11))
    assert [datetime.fromtimestamp(a / 1000, UTC).hour for a, _ in sessions] == [14, 14, 13, 13]
    line = Timeline.collapsed(sessions)
    assert line.starts == (0, SESSION, 2 * SESSION, 3 * SESSION)
    before, after = ms(utc(2026, 3, 6, 20, 59)), ms(utc(2026, 3, 9, 13, 31))
    assert line.x(after) - line.x(before) == 2 * MINUTE_MS


def test_holidays_and_half_days_take_no_more_than_their_open_time() -> None:
    # Thanksgiving (Thu 27 Nov 2025) closed, Friday closes at 13:00 New York time
    sessions = session_table("XNYS", utc(2025, 11, 26), utc(2025, 12, 2))
    line = Timeline.collapsed(sessions)
    lengths = [b - a for a, b in sessions]
    assert lengths == [SESSION, 3 * HOUR_MS + 30 * MINUTE_MS, SESSION]
    wednesday_close, friday_open = ms(utc(2025, 11, 26, 21)), ms(utc(2025, 11, 28, 14, 30))
    assert line.x(friday_open) == line.x(wednesday_close)
    assert line.x(ms(utc(2025, 11, 27, 17))) == SESSION  # the holiday itself: no width
    assert line.typical_session() == SESSION


def test_extended_hours_sessions_are_placed_like_any_other() -> None:
    window = utc(2025, 12, 4, 5), utc(2025, 12, 6, 5)  # the 4th's and the 5th's extended hours
    sessions = session_table("XNYS", *window, extended_hours=True)
    line = Timeline.collapsed(sessions)
    assert line.open_ms == 2 * 16 * HOUR_MS  # 04:00 to 20:00 New York, twice
    pre_market = ms(utc(2025, 12, 5, 10))  # 05:00 in New York
    assert line.x(pre_market) == 16 * HOUR_MS + HOUR_MS


def test_live_points_after_the_last_session() -> None:
    # loaded at 15:00 UTC on a Monday, the market open: the API clips the session to the window
    now = ms(utc(2025, 12, 8, 15))
    sessions = session_table("XNYS", utc(2025, 12, 4), utc(2025, 12, 8, 15))
    closed = Timeline.collapsed(sessions)
    live = Timeline.collapsed(sessions, live_until=ms(utc(2025, 12, 8, 21)))
    later = now + 10 * MINUTE_MS
    assert closed.x(later) == closed.x(now)  # a session that ended: clamped
    assert live.x(later) - live.x(now) == 10 * MINUTE_MS  # the open session runs on, to the right
    assert live.x(ms(utc(2025, 12, 8, 22))) == live.x(ms(utc(2025, 12, 8, 21)))  # after its close


def test_overlapping_and_empty_sessions_are_merged_and_dropped() -> None:
    line = Timeline.collapsed([(300, 400), (100, 200), (150, 250), (500, 500)])
    assert (line.opens, line.closes, line.starts) == ((100, 300), (250, 400), (0, 150))
    table = {"opens": [100, 300], "closes": [250, 400], "starts": [0, 150], "day": 150}
    assert line.args() == table


@given(st.lists(st.integers(0, 10_000), min_size=2, max_size=40), st.integers(-100, 12_000))
def test_x_never_goes_back_and_maps_back_inside_sessions(bounds: list[int], ts: int) -> None:
    edges = sorted(bounds)
    line = Timeline.collapsed(zip(edges[::2], edges[1::2], strict=False))
    assert line.x(ts) <= line.x(ts + 1) <= line.x(ts) + 1
    if any(a <= ts < b for a, b in zip(line.opens, line.closes, strict=True)):
        assert line.ts(line.x(ts)) == ts


def test_candles_in_closed_hours_take_no_width() -> None:
    sessions = session_table("XNYS", utc(2025, 12, 4), utc(2025, 12, 6))
    line = Timeline.collapsed(sessions)
    starts = [ms(utc(2025, 12, 4, 20)), ms(utc(2025, 12, 4, 22)), ms(utc(2025, 12, 5, 14))]
    series = BarSeries(
        symbol="A",
        ts=starts,
        open=[1.0] * 3,
        high=[2.0] * 3,
        low=[0.5] * 3,
        close=[1.5] * 3,
        ticks=[1] * 3,
    )
    cols = candle_columns(series, HOUR_MS, line)
    # the 20:00 bar is open for its hour; the 22:00 one is closed; 14:00 is open from 14:30
    assert cols["w"] == [HOUR_MS * BODY, 0, HOUR_MS / 2 * BODY]
    assert cols["x"][0] == SESSION - HOUR_MS / 2
    assert cols["x"][2] == SESSION + HOUR_MS / 4
    real = candle_columns(series, HOUR_MS, REAL)
    assert real["x"] == [t + HOUR_MS / 2 for t in starts] and real["w"] == [HOUR_MS * BODY] * 3
