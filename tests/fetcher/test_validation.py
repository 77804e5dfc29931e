"""Bad provider data is dropped, counted by reason and logged once per kind."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.common.models import Tick
from services.fetcher.validation import DropLog, DropReason, split_valid

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
TRACKED = ["AAPL", "NVDA"]


def tick(price: str = "100", symbol: str = "AAPL", ts: datetime = NOW) -> Tick:
    return Tick(symbol, ts, Decimal(price))


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (tick("0"), DropReason.NON_POSITIVE),
        (tick("-3.5"), DropReason.NON_POSITIVE),
        (tick("NaN"), DropReason.NOT_FINITE),
        (tick("Infinity"), DropReason.NOT_FINITE),
        (tick("-Infinity"), DropReason.NOT_FINITE),
        (tick(ts=NOW + timedelta(minutes=2)), DropReason.FUTURE),
        (tick(symbol="MSFT"), DropReason.UNTRACKED),
        (tick(ts=NOW.replace(tzinfo=None)), DropReason.MALFORMED),
        (Tick("AAPL", NOW, Decimal(1), volume=-1), DropReason.MALFORMED),
        (Tick("AAPL", NOW, Decimal(1), volume=2**63), DropReason.MALFORMED),
    ],
)
def test_each_kind_of_bad_tick_is_dropped(bad: Tick, reason: DropReason) -> None:
    good, dropped = split_valid([tick(), bad, tick(symbol="NVDA")], TRACKED, NOW, DropLog())
    assert good == [tick(), tick(symbol="NVDA")]
    assert dropped == {reason: 1}


def test_small_clock_skew_is_accepted() -> None:
    good, dropped = split_valid([tick(ts=NOW + timedelta(seconds=30))], TRACKED, NOW, DropLog())
    assert len(good) == 1 and not dropped


def test_each_kind_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    drops = DropLog()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            split_valid([tick("0"), tick("NaN"), tick("-1")], TRACKED, NOW, drops)
    reasons = [r.__dict__["reason"] for r in caplog.records]
    assert sorted(reasons) == [DropReason.NOT_FINITE, DropReason.NON_POSITIVE]
