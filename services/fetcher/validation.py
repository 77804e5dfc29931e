"""Checks on provider data before it may reach the database."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import TypeVar

from services.common.models import Bar, Profile, Tick, Week52

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_CLOCK_SKEW = timedelta(minutes=1)
MAX_VOLUME = 2**63 - 1  # the `volume bigint` column: more would fail the whole batch's insert


class DropReason(StrEnum):
    """Why a tick was not written."""

    NON_POSITIVE = "non_positive_price"
    NOT_FINITE = "non_finite_price"
    FUTURE = "future_timestamp"
    UNTRACKED = "untracked_symbol"
    MALFORMED = "malformed"
    BUFFER_FULL = "buffer_full"
    REJECTED = "rejected_by_database"
    EXPIRED = "older_than_retention"
    INCONSISTENT = "inconsistent_bar"  # a bar's low above its open or close, or high below
    NOT_ASKED = "outside_request"  # a bar the vendor sent for a minute nobody asked for


def check_tick(tick: Tick, tracked: Collection[str], now: datetime) -> DropReason | None:
    """The reason `tick` must be dropped, or None when it is good."""
    if tick.symbol not in tracked:
        return DropReason.UNTRACKED
    if not tick.price.is_finite():
        return DropReason.NOT_FINITE
    if tick.price <= 0:
        return DropReason.NON_POSITIVE
    if tick.ts.tzinfo is None or tick.ts - now > MAX_CLOCK_SKEW:
        return DropReason.FUTURE if tick.ts.tzinfo is not None else DropReason.MALFORMED
    if tick.volume is not None and not 0 <= tick.volume <= MAX_VOLUME:
        return DropReason.MALFORMED
    return None


def check_bar(bar: Bar, tracked: Collection[str], now: datetime) -> DropReason | None:
    """The reason vendor bar `bar` must be dropped, or None when it is good."""
    if bar.symbol not in tracked:
        return DropReason.UNTRACKED
    prices = (bar.open, bar.high, bar.low, bar.close)
    if not all(p.is_finite() for p in prices):
        return DropReason.NOT_FINITE
    if bar.low <= 0:
        return DropReason.NON_POSITIVE
    if not bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high:
        return DropReason.INCONSISTENT
    if bar.start.tzinfo is None or bar.start.second or bar.start.microsecond:
        return DropReason.MALFORMED  # a minute bar starts on a whole minute, in a known zone
    if bar.start - now > MAX_CLOCK_SKEW:
        return DropReason.FUTURE
    if bar.volume is not None and not 0 <= bar.volume <= MAX_VOLUME:
        return DropReason.MALFORMED
    return None


class DropLog:
    """Logs the first drop of each kind, so a bad feed cannot flood the log."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def record(self, reason: str, detail: str) -> None:
        if reason not in self._seen:
            self._seen.add(reason)
            log.warning(
                "dropping bad data (logged once per kind; see ticks_dropped_total)",
                extra={"reason": reason, "detail": detail},
            )


def _split(
    items: Iterable[T],
    check: Callable[[T], str | None],
    describe: Callable[[T], str],
    drops: DropLog,
) -> tuple[list[T], Counter[str]]:
    """The items `check` finds nothing wrong with, and a count of the others by reason."""
    good: list[T] = []
    dropped: Counter[str] = Counter()
    for item in items:
        reason = check(item)
        if reason is None:
            good.append(item)
        else:
            dropped[reason] += 1
            drops.record(reason, describe(item))
    return good, dropped


def split_valid(
    ticks: Iterable[Tick], tracked: Collection[str], now: datetime, drops: DropLog
) -> tuple[list[Tick], Counter[str]]:
    """Good ticks, and a count of the dropped ones by reason."""
    return _split(
        ticks,
        lambda t: check_tick(t, tracked, now),
        lambda t: f"{t.symbol} {t.price} at {t.ts.isoformat()}",
        drops,
    )


def split_valid_bars(
    bars: Iterable[Bar], tracked: Collection[str], now: datetime, drops: DropLog
) -> tuple[list[Bar], Counter[str]]:
    """Good vendor bars, and a count of the dropped ones by reason."""
    return _split(
        bars,
        lambda b: check_bar(b, tracked, now),
        lambda b: f"{b.symbol} bar at {b.start.isoformat()}: {b.open}/{b.high}/{b.low}/{b.close}",
        drops,
    )


MAX_NAME = 200
MAX_LOGO_URL = 64 * 1024  # data: URIs carry the image itself


def usable_profile(profile: Profile) -> Profile | None:
    """The profile as the page may show it: a logo only over HTTPS or as an inline image, a
    name of sane length; None when nothing usable is left. Anything else could load a script or
    a tracking pixel into every viewer's page."""
    name = profile.name.strip() if profile.name else None
    if name and (len(name) > MAX_NAME or not name.isprintable()):
        name = None
    logo = profile.logo_url
    if logo is not None and not (
        len(logo) <= MAX_LOGO_URL
        and (logo.startswith("https://") or logo.startswith("data:image/"))
        and not any(c.isspace() or c in "\"'<>" for c in logo)
    ):
        logo = None
    if name == profile.name and logo == profile.logo_url:
        return profile
    if name is None and logo is None:
        return None
    return replace(profile, name=name, logo_url=logo)


def _positive(value: Decimal) -> bool:
    return value.is_finite() and value > 0


def usable_week52(week52: Week52) -> Week52 | None:
    """The range as the table's checks accept it (an unusable previous close left out), or None."""
    if not (_positive(week52.low) and _positive(week52.high) and week52.low <= week52.high):
        return None
    if week52.previous_close is not None and not _positive(week52.previous_close):
        return replace(week52, previous_close=None)
    return week52
