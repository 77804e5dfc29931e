"""Zone names, the closed-market banner and the table's time cells."""

from __future__ import annotations

from datetime import UTC, datetime

from services.common.contract import Market
from services.dashboard.clock import (
    LOCAL,
    banner_html,
    default_zone,
    is_always_open,
    table_time_template,
    zone_abbreviation,
    zone_label,
)
from tests.dashboard.conftest import market_payload

WINTER, SUMMER = datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 7, 15, tzinfo=UTC)


def market(calendar: str, at: datetime, **options: object) -> Market:
    return Market.model_validate(market_payload(calendar, at, **options))  # type: ignore[arg-type]


def test_zone_names_are_short_and_generic_where_people_say_so() -> None:
    assert zone_abbreviation("America/New_York", WINTER) == "ET"
    assert zone_abbreviation("America/New_York", SUMMER) == "ET"
    assert zone_abbreviation("America/Chicago", SUMMER) == "CT"
    assert zone_abbreviation("Europe/London", WINTER) == "GMT"
    assert zone_abbreviation("Europe/London", SUMMER) == "BST"
    assert zone_abbreviation("Asia/Tokyo", SUMMER) == "JST"
    assert zone_label("America/New_York") == "New York (ET)"
    assert zone_label("America/Argentina/Buenos_Aires", WINTER) == "Buenos Aires (-03)"
    assert zone_label("UTC") == "UTC"


def test_the_banner_names_the_next_open_in_the_exchanges_time() -> None:
    saturday = datetime(2025, 12, 6, 12, tzinfo=UTC)
    closed = market("XNYS", saturday)
    text = banner_html(closed, saturday)
    assert 'data-market="closed"' in text and "Market closed — opens Mon 09:30 ET" in text
    # before Thanksgiving's holiday, on the Wednesday evening: Friday's open
    wednesday = datetime(2025, 11, 27, 1, tzinfo=UTC)
    assert "opens Fri 09:30 ET" in banner_html(market("XNYS", wednesday), wednesday)
    # London in summer, its own zone's name
    sunday = datetime(2026, 7, 12, 12, tzinfo=UTC)
    assert "opens Mon 08:00 BST" in banner_html(market("XLON", sunday), sunday)
    # an open market and the simulator's 24/7 have none
    assert banner_html(market("XNYS", datetime(2025, 12, 5, 16, tzinfo=UTC))) == ""
    assert banner_html(market("24/7", saturday)) == "" and banner_html(None) == ""


def test_a_far_open_is_dated() -> None:
    now = datetime(2025, 12, 6, 12, tzinfo=UTC)
    far = market("XNYS", now).model_copy(
        update={"next_open": datetime(2025, 12, 22, 14, 30, tzinfo=UTC)}
    )
    assert "opens Mon 22 Dec 09:30 ET" in banner_html(far, now)


def test_times_default_to_the_exchanges_zone_and_to_the_browsers_for_24_7() -> None:
    assert default_zone(market("XNYS", WINTER)) == "America/New_York"
    assert default_zone(market("24/7", WINTER)) == LOCAL
    assert default_zone(None) == LOCAL
    assert is_always_open(market("24/7", WINTER)) and not is_always_open(market("XNYS", WINTER))


def test_the_table_time_cell_formats_in_the_zone_shown() -> None:
    assert '"timeZone": "America/New_York"' in table_time_template("America/New_York")
    assert "timeZone" not in table_time_template(LOCAL)
