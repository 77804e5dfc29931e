"""The price chart: one line with markers per stock, 52-week bands, logos, legend and hover."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bokeh.core.property.vectorization import value
from bokeh.models import glyphs
from bokeh.models.annotations.labels import Title
from bokeh.models.annotations.legends import Legend, LegendItem
from bokeh.models.filters import GroupFilter
from bokeh.models.formatters import NumeralTickFormatter
from bokeh.models.ranges import DataRange1d
from bokeh.models.renderers.glyph_renderer import GlyphRenderer
from bokeh.models.sources import CDSView, ColumnDataSource
from bokeh.models.tools import HoverTool
from bokeh.plotting import figure

from services.dashboard.clock import TimeAxis
from services.dashboard.shaping import PALETTE, WINDOW_LABELS, WINDOWS, colour_for

BAND_CAPTION = "Shaded bands: each stock's 52-week range, from its 52-week low to its 52-week high."
PRICE_FORMAT = "$0,0.00"
PCT_FORMAT = "+0.0%"
LOGO_PX = 24
# Fainter in % mode, where every band spans the whole chart and they all overlap.
BAND_ALPHA = {"price": 0.035, "pct": 0.015}


def price_figure(name: str, title: Title, axis: TimeAxis, **options: Any) -> Any:
    """A figure of prices over time (`axis`) with the dashboard's tools, size and dollar axis."""
    p = figure(
        name=name,
        title=title,
        tools="pan,box_zoom,wheel_zoom,reset,save",
        active_scroll="wheel_zoom",
        sizing_mode="stretch_width",
        height=480,
        min_width=600,
        toolbar_location="above",
        **options,
    )
    p.toolbar.logo = None
    p.xaxis.ticker = axis.ticker
    p.xaxis.formatter = axis.formatter
    p.xaxis.name = f"{name}_xaxis"
    p.yaxis.formatter = NumeralTickFormatter(format=PRICE_FORMAT)
    p.yaxis.axis_label = "Price (USD)"
    return p


@dataclass
class Line:
    """The models drawn for one stock."""

    symbol: str
    source: ColumnDataSource
    band: GlyphRenderer[Any]
    path: GlyphRenderer[Any]
    markers: GlyphRenderer[Any]
    frame: GlyphRenderer[Any]
    logo: GlyphRenderer[Any]
    legend_item: LegendItem
    colour: str

    @property
    def renderers(self) -> list[GlyphRenderer[Any]]:
        """What the legend entry draws and hides (the logo's frame follows the line)."""
        return [self.band, self.path, self.markers, self.logo]


class PriceChart:
    """A datetime x / currency y figure that lines, bands and logos are added to."""

    def __init__(self, window: str) -> None:
        self.x_range = DataRange1d(
            follow="end",
            follow_interval=WINDOWS[window],
            range_padding=0.03,
            only_visible=True,
            renderers=[],
        )
        self.y_range = DataRange1d(range_padding=0.12, only_visible=True, renderers=[])
        self.ranged: list[GlyphRenderer[Any]] = []
        self.title_model = Title(text=self.title(window), name="title")
        self.axis = TimeAxis("chart")
        self.figure = p = price_figure(
            "chart", self.title_model, self.axis, x_range=self.x_range, y_range=self.y_range
        )
        p.add_layout(Title(text=BAND_CAPTION, text_font_style="italic", name="caption"), "below")
        self.bands = ColumnDataSource(
            {k: [] for k in ("symbol", "low", "high", "low_pct", "high_pct", "colour")},
            name="bands",
        )
        self.logos = ColumnDataSource(
            {k: [] for k in ("symbol", "url", "ts", "x", "price", "pct")}, name="logos"
        )
        self.legend = Legend(items=[], click_policy="hide", name="legend", location="top_left")
        p.add_layout(self.legend, "right")
        self.hover = HoverTool(
            renderers=[],
            tooltips=[
                ("stock", "$name"),
                ("time", "@ts{custom}"),
                ("price", "@price{$0,0.00}"),
                ("change", "@pct{+0.00%} since window start"),
            ],
            formatters={"@ts": self.axis.hover},
            mode="mouse",
            limit=1,  # dense lines put many points under the cursor: name the nearest only
        )
        p.add_tools(self.hover)
        self.lines: dict[str, Line] = {}
        self.mode = "price"

    @staticmethod
    def title(window: str) -> str:
        return f"Live stock prices · last {WINDOW_LABELS[window]}"

    def add_line(self, symbol: str, colour: str) -> Line:
        """Draw a new stock: band behind, then line, markers and logo; one legend entry for all."""
        p = self.figure
        y = self.mode
        source = ColumnDataSource(
            {"ts": [], "x": [], "price": [], "pct": []}, name=f"source_{symbol}"
        )
        # Glyph renderers made directly, not through figure's glyph methods: those add a
        # selection and a muted copy of every glyph, a third of a page's models, which nothing
        # here selects or mutes (BokehJS derives them when needed).
        band = p.add_glyph(
            self.bands,
            glyphs.HStrip(
                y0="low" if y == "price" else "low_pct",
                y1="high" if y == "price" else "high_pct",
                fill_color=colour,
                fill_alpha=BAND_ALPHA[y],
                line_color=colour,
                line_alpha=0.5,
                line_dash="dotted",
            ),
            view=CDSView(filter=GroupFilter(column_name="symbol", group=symbol)),
            name=f"band_{symbol}",
            level="underlay",
        )
        line = p.add_glyph(
            source,
            glyphs.Line(x="x", y=y, line_color=colour, line_width=2),
            name=f"line_{symbol}",
        )
        markers = p.add_glyph(
            source,
            glyphs.Scatter(
                x="x", y=y, size=5, fill_color="white", line_color=colour, line_width=1.5
            ),
            name=symbol,
        )
        logo_view = CDSView(filter=GroupFilter(column_name="symbol", group=symbol))
        # A frame in the line's colour ties a logo (whatever its own colours) to its line.
        frame = p.add_glyph(
            self.logos,
            glyphs.Scatter(
                x="x",
                y=y,
                marker="square",
                size=LOGO_PX + 6,
                fill_color="white",
                line_color=colour,
                line_width=2.5,
            ),
            view=logo_view,
            name=f"frame_{symbol}",
        )
        logo = p.add_glyph(
            self.logos,
            glyphs.ImageURL(
                url="url",
                x="x",
                y=y,
                w=value(LOGO_PX, units="screen"),
                h=value(LOGO_PX, units="screen"),
                anchor="center",  # type: ignore[arg-type]  # bokeh's stub wants a Property
            ),
            view=logo_view,
            name=f"logo_{symbol}",
        )
        line.js_link("visible", frame, "visible")  # a legend click hides the frame too
        # Bands may lie far from today's prices: keep the axes on the lines themselves.
        self.ranged.append(line)
        self.x_range.renderers = self.y_range.renderers = list(self.ranged)
        self.hover.renderers = [*self.hover.renderers, markers]
        item = LegendItem(label=symbol, name=f"legend_{symbol}")
        entry = Line(symbol, source, band, line, markers, frame, logo, item, colour)
        item.renderers = entry.renderers
        self.legend.items = [*self.legend.items, item]
        self.lines[symbol] = entry
        return entry

    def remove_line(self, symbol: str) -> None:
        """Take a stock off the chart: its line, markers, band, logo and legend entry at once."""
        entry = self.lines.pop(symbol, None)
        if entry is None:
            return
        gone = {entry.band, entry.path, entry.markers, entry.frame, entry.logo}
        self.figure.renderers = [r for r in self.figure.renderers if r not in gone]
        self.ranged.remove(entry.path)
        self.x_range.renderers = self.y_range.renderers = list(self.ranged)
        self.hover.renderers = [line.markers for line in self.lines.values()]
        self.legend.items = [line.legend_item for line in self.lines.values()]

    def free_colour(self) -> str:
        """The first palette colour no line has (lines keep theirs when others go)."""
        used = {line.colour for line in self.lines.values()}
        return next((c for c in PALETTE if c not in used), colour_for(len(self.lines)))

    def set_window(self, window: str, width: float | None = None) -> None:
        """Show `window`; `width` is its width on the axis when closed hours are collapsed."""
        self.x_range.follow_interval = width if width is not None else WINDOWS[window]
        self.title_model.text = self.title(window)

    def set_mode(self, mode: str) -> None:
        """Draw prices ("price") or change since the window's start ("pct")."""
        self.mode = mode
        pct = mode == "pct"
        for line in self.lines.values():
            line.band.glyph.y0, line.band.glyph.y1 = (
                ("low_pct", "high_pct") if pct else ("low", "high")
            )
            line.band.glyph.fill_alpha = BAND_ALPHA[mode]
            for renderer in (line.path, line.markers, line.frame, line.logo):
                renderer.glyph.y = mode
        self.figure.yaxis.formatter = NumeralTickFormatter(
            format=PCT_FORMAT if pct else PRICE_FORMAT
        )
        self.figure.yaxis.axis_label = "Change since window start" if pct else "Price (USD)"

    def set_marker_size(self, points: int) -> None:
        """Smaller markers when a line is dense, so the line stays readable."""
        size = 6 if points <= 120 else 4 if points <= 400 else 2.5
        for line in self.lines.values():
            line.markers.glyph.size = size

    def set_visible(self, symbols: set[str]) -> None:
        for symbol, line in self.lines.items():
            for renderer in (*line.renderers, line.frame):
                renderer.visible = symbol in symbols
            line.legend_item.visible = symbol in symbols
