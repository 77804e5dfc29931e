"""The candlestick view: one stock's stored bars over the window, its last candle kept live."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from bokeh.models.annotations.labels import Title
from bokeh.models.sources import ColumnDataSource
from bokeh.models.tools import HoverTool

from services.common.contract import BarSeries
from services.dashboard.chart import price_figure
from services.dashboard.clock import TimeAxis
from services.dashboard.shaping import DOWN_COLOUR, UP_COLOUR, WINDOW_LABELS, Columns
from services.dashboard.timeline import REAL, Timeline

CANDLES = 120  # bars asked for per window: wide enough to read, enough to show the shape
BODY = 0.7  # a candle's body, as a fraction of its bar's width
KEYS = ("ts", "x", "w", "open", "high", "low", "close", "top", "bottom", "colour")


def candle_row(
    ts: int,
    width: int,
    o: float,
    h: float,
    lo: float,
    c: float,
    timeline: Timeline = REAL,
) -> dict[str, Any]:
    """One candle's columns: centred in its bar, body from open to close, coloured by direction.

    x and w are the bar's middle and its body's width on the axis: with closed hours collapsed,
    the open part of the bar only (a bar wholly in closed hours has no width).
    """
    left, right = timeline.x(ts), timeline.x(ts + width)
    return {
        "ts": ts,
        "x": (left + right) / 2,
        "w": (right - left) * BODY,
        "open": o,
        "high": h,
        "low": lo,
        "close": c,
        "top": max(o, c),
        "bottom": min(o, c),
        "colour": UP_COLOUR if c >= o else DOWN_COLOUR,
    }


def candle_columns(series: BarSeries | None, width: int, timeline: Timeline = REAL) -> Columns:
    """One `/bars` series as the candle source's columns."""
    cols: Columns = {k: [] for k in KEYS}
    if series is None:
        return cols
    fields = (series.ts, series.open, series.high, series.low, series.close)
    if len({len(f) for f in fields}) != 1:
        raise ValueError(f"bars of {series.symbol!r}: columns of different lengths")
    for ts, o, h, lo, c in zip(*fields, strict=True):
        for key, value in candle_row(ts, width, o, h, lo, c, timeline).items():
            cols[key].append(value)
    return cols


@dataclass(frozen=True, slots=True)
class CandleUpdate:
    """A live price's effect: replace the last candle (index) or append a new one."""

    row: dict[str, Any]
    replace: int | None


def candle_update(
    data: Mapping[str, Sequence[Any]],
    width: int,
    ts: int,
    price: float,
    timeline: Timeline = REAL,
) -> CandleUpdate | None:
    """Fold one live price into the candles; None when it is older than the last candle."""
    if not width:
        return None
    start = ts // width * width
    if len(data["ts"]):
        last = len(data["ts"]) - 1
        last_ts = int(data["ts"][last])
        if start < last_ts:
            return None
        if start == last_ts:
            o = float(data["open"][last])
            h, lo = max(float(data["high"][last]), price), min(float(data["low"][last]), price)
            return CandleUpdate(candle_row(start, width, o, h, lo, price, timeline), last)
    return CandleUpdate(candle_row(start, width, price, price, price, price, timeline), None)


class CandleChart:
    """A second figure, shown instead of the lines when the candlestick view is picked."""

    def __init__(self) -> None:
        self.source = ColumnDataSource({k: [] for k in KEYS}, name="candle_source")
        self.title_model = Title(text="", name="candle_title")
        self.axis = TimeAxis("candles")
        self.figure = p = price_figure("candles", self.title_model, self.axis, visible=False)
        p.segment("x", "high", "x", "low", source=self.source, color="colour", name="wicks")
        self.bodies = p.vbar(
            x="x",
            width="w",
            top="top",
            bottom="bottom",
            source=self.source,
            fill_color="colour",
            line_color="colour",
            name="bodies",
        )
        p.add_tools(
            HoverTool(
                renderers=[self.bodies],
                tooltips=[
                    ("from", "@ts{custom}"),
                    ("open", "@open{$0,0.00}"),
                    ("high", "@high{$0,0.00}"),
                    ("low", "@low{$0,0.00}"),
                    ("close", "@close{$0,0.00}"),
                ],
                formatters={"@ts": self.axis.hover},
            )
        )
        self.width = 0  # ms per candle, as last served
        self.timeline = REAL

    def show(self, symbol: str | None, window: str, interval: str | None = None) -> None:
        every = f" · {interval} candles" if interval else ""
        name = symbol or "no stock picked"
        self.title_model.text = f"{name} · last {WINDOW_LABELS[window]}{every}"

    def set_bars(self, columns: Columns, width: int, timeline: Timeline = REAL) -> None:
        self.width = width
        self.timeline = timeline
        self.source.data = columns

    def apply(self, ts: int, price: float, rollover: int) -> None:
        """A live price for the stock shown: move the last candle or open a new one."""
        data = cast(Mapping[str, Sequence[Any]], self.source.data)
        update = candle_update(data, self.width, ts, price, self.timeline)
        if update is None:
            return
        if update.replace is None:
            self.source.stream({k: [v] for k, v in update.row.items()}, rollover=rollover)
        else:
            i = update.replace
            self.source.patch({k: [(i, v)] for k, v in update.row.items()})
