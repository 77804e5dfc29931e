"""The exchange calendar: sessions, open state and the next open and close."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.common.market import Market, UnknownCalendar


def test_nyse_is_closed_on_a_saturday_and_opens_on_monday_at_0930_new_york():
    state = Market("XNYS").state(datetime(2026, 12, 5, 15, 0, tzinfo=UTC))
    assert not state.is_open
    assert state.next_open == datetime(2026, 12, 7, 14, 30, tzinfo=UTC)
    assert state.next_close == datetime(2026, 12, 7, 21, 0, tzinfo=UTC)
    assert state.timezone == "America/New_York"


def test_open_minutes_leave_out_thanksgiving_and_end_early_the_day_after():
    minutes = Market("XNYS").open_minutes(
        datetime(2026, 11, 23, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC)
    )
    assert len(minutes) == 3 * 390 + 210
    assert not any(m.day == 26 for m in minutes)
    assert max(minutes) == datetime(2026, 11, 27, 17, 59, tzinfo=UTC)


def test_extended_hours_widen_the_session_from_four_to_eight_new_york_time():
    day = (datetime(2026, 12, 7, tzinfo=UTC), datetime(2026, 12, 8, 6, tzinfo=UTC))
    assert Market("XNYS").sessions(*day) == [
        (datetime(2026, 12, 7, 14, 30, tzinfo=UTC), datetime(2026, 12, 7, 21, 0, tzinfo=UTC))
    ]
    assert Market("XNYS", extended_hours=True).sessions(*day) == [
        (datetime(2026, 12, 7, 9, 0, tzinfo=UTC), datetime(2026, 12, 8, 1, 0, tzinfo=UTC))
    ]


def test_a_24_7_market_never_closes():
    state = Market("24/7").state(datetime(2026, 12, 5, 15, 0, tzinfo=UTC))
    assert state.is_open and state.next_open is None and state.next_close is None


def test_an_unknown_calendar_is_refused_by_name():
    with pytest.raises(UnknownCalendar, match="'NOPE'"):
        Market("NOPE")
