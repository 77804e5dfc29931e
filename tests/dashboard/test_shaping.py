"""Pure data shaping: columns, % change, band geometry, tick merging and the rollover bound."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.contract import Series
from services.dashboard.shaping import (
    PALETTE,
    WINDOWS,
    Merge,
    Point,
    band_columns,
    bucket_ms,
    colour_for,
    day_change,
    logo_anchor,
    logo_columns,
    merge_ticks,
    pct_change,
    rollover_for,
    series_columns,
    table_columns,
    table_row,
)
from tests.dashboard.conftest import T0, bare_stock, parsed_stock


def series(ts: list[int], price: list[float]) -> Series:
    return Series(symbol="A", ts=ts, price=price, downsampled=False, bucket_ms=None)


def test_series_columns_from_prices_json() -> None:
    parsed = Series.model_validate_json(
        f'{{"symbol": "A", "ts": [{T0}, {T0 + 1000}], "price": [100, 110.0], '
        '"downsampled": false, "bucket_ms": null}'
    )
    cols = series_columns(parsed)
    assert cols["ts"] == [T0, T0 + 1000]
    assert cols["price"] == [100.0, 110.0]
    assert cols["pct"] == pytest.approx([0.0, 0.1])
    empty: dict[str, list[float]] = {"ts": [], "price": [], "pct": []}
    assert series_columns(series([], [])) == series_columns(None) == empty
    with pytest.raises(ValueError, match="2 times but 1 prices"):
        series_columns(series([1, 2], [3]))


def test_pct_change_needs_a_base() -> None:
    assert pct_change([50.0, 75.0], 50.0) == [0.0, 0.5]
    assert all(math.isnan(v) for v in pct_change([1.0], None))


def test_bucket_and_rollover() -> None:
    assert bucket_ms(WINDOWS["1h"], 1000) == 3600
    assert bucket_ms(WINDOWS["1m"], 1000) == 2_592_000
    assert rollover_for(WINDOWS["1h"], 3600, cap=1000) == 1000
    assert rollover_for(WINDOWS["1h"], 60_000, cap=1000) == 61


def test_merge_drops_old_ticks_and_one_point_per_bucket() -> None:
    ticks = [
        Point(900, 1.0),
        Point(1000, 2.0),
        Point(1500, 3.0),
        Point(2100, 4.0),
        Point(2500, 5.0),
    ]
    merge = merge_ticks(last_ts=1000, bucket=1000, ticks=ticks)
    # 900 and 1000 are not newer than the line; 1500 moves the last point (same bucket as 1000);
    # 2100 starts a new bucket and 2500 replaces it before it is ever drawn.
    assert merge == Merge(replace_last=Point(1500, 3.0), append=[Point(2500, 5.0)])
    assert merge_ticks(None, 1000, [Point(5, 1.0)]) == Merge(append=[Point(5, 1.0)])
    assert merge_ticks(10, 1000, []) == Merge()


@given(
    st.lists(st.integers(min_value=0, max_value=10**6), max_size=200),
    st.integers(min_value=1, max_value=5000),
)
def test_merged_lines_stay_ordered_and_bounded(times: list[int], bucket: int) -> None:
    """However ticks arrive, a line only moves forward and has at most one point per bucket."""
    line: list[Point] = []
    rollover = 50
    for start in range(0, len(times), 7):
        batch = [Point(t, 1.0) for t in times[start : start + 7]]
        merge = merge_ticks(line[-1].ts if line else None, bucket, batch)
        if merge.replace_last is not None:
            line[-1] = merge.replace_last
        line = (line + merge.append)[-rollover:]
        assert len(line) <= rollover
        assert all(a.ts < b.ts for a, b in zip(line, line[1:], strict=False))
        assert len({p.ts // bucket for p in line}) == len(line)


def test_band_geometry_in_price_and_percent() -> None:
    stocks = [
        parsed_stock("A", 100.0),
        parsed_stock("B", 20.0, week52_low=30, week52_high=10),
        bare_stock("C"),
    ]
    cols = band_columns(stocks, {"A": 200.0, "B": None})
    assert cols["symbol"] == ["A", "B"]  # C has no 52-week range: no band
    assert cols["low"] == [70.0, 10.0] and cols["high"] == [130.0, 30.0]  # B's ends put in order
    assert cols["low_pct"][0] == pytest.approx(-0.65) and cols["high_pct"][0] == pytest.approx(
        -0.35
    )
    assert math.isnan(cols["low_pct"][1])
    assert cols["colour"] == [PALETTE[0], PALETTE[1]]


def test_logos_sit_on_the_first_point() -> None:
    stocks = [
        parsed_stock("A", 100.0),
        parsed_stock("B", 10.0),
        parsed_stock("C", 1.0, logo_url=None),
    ]
    starts = {"A": Point(T0, 110.0), "B": None, "C": Point(T0, 1.0)}
    cols = logo_columns(stocks, starts, {"A": 100.0})
    assert cols["symbol"] == ["A"] and cols["ts"] == [T0] and cols["price"] == [110.0]
    assert cols["pct"] == pytest.approx([0.1])


def test_logo_anchor_is_the_first_point_well_inside_the_window() -> None:
    ts = [0, 100, 500, 980, 1000]
    price = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert logo_anchor(ts, price, window_ms=1000) == Point(100, 2.0)  # 0 is at the very edge
    assert logo_anchor(ts, price, window_ms=10_000) == Point(0, 1.0)  # all of it is visible
    assert logo_anchor(ts, price, window_ms=10) == Point(1000, 5.0)
    assert logo_anchor([], [], 1000) is None


def test_logos_of_lines_that_start_together_are_staggered() -> None:
    ts = list(range(0, 1001, 10))
    price = [float(t) for t in ts]
    anchors = [logo_anchor(ts, price, window_ms=1000, slot=k) for k in range(8)]
    xs = [a.ts for a in anchors if a is not None]
    assert xs == sorted(xs) and len(set(xs)) == 8  # one place per line, left to right
    assert all(b - a >= 30 for a, b in itertools.pairwise(xs))  # a logo's width apart
    short = logo_anchor(ts[:11], price[:11], window_ms=10_000, slot=3)  # a line just begun
    assert short is not None and 0 < short.ts < 100


def test_table_rows_and_day_change() -> None:
    row = table_row(parsed_stock("A", 100.0), price=95.0)
    assert (row["price"], row["change"]) == (95.0, -5.0)
    assert row["change_pct"] == pytest.approx(-0.05)
    assert row["range"] == "$70.00 – $130.00"
    assert all(math.isnan(v) for v in day_change(None, 10.0))
    bare = table_row(bare_stock("Z"))
    assert bare["name"] == "Z" and bare["range"] == "—" and math.isnan(bare["price"])
    assert table_columns([parsed_stock("A", 1.0), parsed_stock("B", 2.0)])["symbol"] == ["A", "B"]


def test_palette_is_okabe_ito_and_cycles() -> None:
    assert set(PALETTE) == {
        "#E69F00",
        "#56B4E9",
        "#009E73",
        "#F0E442",
        "#0072B2",
        "#D55E00",
        "#CC79A7",
        "#000000",
    }
    assert colour_for(len(PALETTE)) == colour_for(0)
