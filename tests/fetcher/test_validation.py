"""Bad provider data is dropped, counted by reason and logged once per kind."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.common.models import Bar, Profile, Tick
from services.fetcher.validation import (
    DropLog,
    DropReason,
    split_valid,
    split_valid_bars,
    usable_profile,
)

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


def bar(
    o: str = "10",
    h: str = "11",
    low: str = "9",
    c: str = "10.5",
    symbol: str = "AAPL",
    start: datetime = NOW,
    volume: int | None = 100,
) -> Bar:
    return Bar(symbol, start, Decimal(o), Decimal(h), Decimal(low), Decimal(c), volume)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (bar(symbol="MSFT"), DropReason.UNTRACKED),
        (bar(h="NaN"), DropReason.NOT_FINITE),
        (bar(c="Infinity", h="Infinity"), DropReason.NOT_FINITE),
        (bar(low="0"), DropReason.NON_POSITIVE),
        (bar(o="-1", low="-2"), DropReason.NON_POSITIVE),
        (bar(low="10.2"), DropReason.INCONSISTENT),  # the low above the open
        (bar(h="10.4"), DropReason.INCONSISTENT),  # the high below the close
        (bar(h="8", low="12"), DropReason.INCONSISTENT),
        (bar(volume=-1), DropReason.MALFORMED),
        (bar(volume=2**63), DropReason.MALFORMED),
        (bar(start=NOW + timedelta(seconds=30)), DropReason.MALFORMED),  # not on a minute
        (bar(start=NOW.replace(tzinfo=None)), DropReason.MALFORMED),
        (bar(start=NOW + timedelta(minutes=2)), DropReason.FUTURE),
    ],
)
def test_each_kind_of_bad_bar_is_dropped(bad: Bar, reason: DropReason) -> None:
    flat = bar("10", "10", "10", "10", volume=None)  # one price all minute, no volume: fine
    good, dropped = split_valid_bars([bar(), bad, flat], TRACKED, NOW, DropLog())
    assert good == [bar(), flat]
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


@pytest.mark.parametrize(
    ("logo", "kept"),
    [
        ("https://static.finnhub.io/logo/aapl.png", True),
        ("data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=", True),
        ("http://plain.example/logo.png", False),  # mixed content on an HTTPS page
        ("javascript:alert(1)", False),
        ("data:text/html,<script>alert(1)</script>", False),
        ('https://x.example/a.png" onerror="alert(1)', False),
        ("https://x.example/" + "a" * 70_000, False),
    ],
)
def test_logos_only_over_https_or_inline_images(logo: str, kept: bool) -> None:
    profile = Profile("AAPL", "Apple Inc.", logo)
    usable = usable_profile(profile)
    assert usable is not None and usable.name == "Apple Inc."
    assert (usable.logo_url == logo) is kept and (usable is profile) is kept


def test_names_are_length_capped_and_printable() -> None:
    assert usable_profile(Profile("AAPL", "A" * 201, None)) is None
    assert usable_profile(Profile("AAPL", "Apple\x00Inc", None)) is None
    kept = usable_profile(Profile("AAPL", "Apple\nInc", "https://x.example/a.png"))
    assert kept is not None and kept.name is None and kept.logo_url == "https://x.example/a.png"
