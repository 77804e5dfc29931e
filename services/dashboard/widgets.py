"""The controls around the chart: window, stocks, mode, connection indicator and latest table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bokeh.layouts import column, row
from bokeh.models.filters import IndexFilter
from bokeh.models.layouts import Column, LayoutDOM
from bokeh.models.plots import Plot
from bokeh.models.sources import CDSView, ColumnDataSource
from bokeh.models.widgets.groups import RadioButtonGroup
from bokeh.models.widgets.inputs import MultiChoice, Select
from bokeh.models.widgets.markups import Div
from bokeh.models.widgets.tables import (
    DataTable,
    HTMLTemplateFormatter,
    NumberFormatter,
    TableColumn,
)

from services.dashboard.clock import LOCAL_LABEL, WARNING_COLOUR, table_time_template
from services.dashboard.feed import Status
from services.dashboard.shaping import (
    DOWN_COLOUR,
    TABLE_KEYS,
    UP_COLOUR,
    WINDOW_LABELS,
    WINDOWS,
)

WINDOW_NAMES = list(WINDOWS)
MODES = ["price", "pct"]
VIEWS = ["lines", "candles"]
TABLE_HEADER_PX, TABLE_ROW_PX = 32, 26
STATUS_TEXT = {
    Status.CONNECTING: ("connecting", "#56B4E9", "Connecting to the API…"),
    Status.LIVE: ("live", "#009E73", "Live"),
    Status.RECONNECTING: ("reconnecting", "#E69F00", "Reconnecting…"),
    Status.UNREACHABLE: (
        "unreachable",
        "#D55E00",
        "API unreachable: showing the last data received",
    ),
}

# Colour plus an arrow, so up and down differ for everyone, not only by hue.
_CHANGE_TEMPLATE = """<% if (value == null || isNaN(value)) { %><span>—</span><% } else { %>
<span style="color:<%= value >= 0 ? '{up}' : '{down}' %>;font-weight:600"><%= value >= 0 ? '▲ +' : '▼ ' %><%= {expr} %></span><% } %>"""  # noqa: E501


# The provider of a stock's last tick; a fallback provider is marked in words and colour.
SOURCE_TEMPLATE = (
    '<% if (value) { %><span class="source" data-source="<%- value %>" '
    "data-failover=\"<%= failover ? 'true' : 'false' %>\" "
    "style=\"<%= failover ? 'color:{warn};font-weight:600' : 'color:#555' %>\">"
    "<%- value %><% if (failover) { %> · failover<% } %></span><% } else { %>—<% } %>"
).replace("{warn}", WARNING_COLOUR)


def _change_formatter(expr: str) -> HTMLTemplateFormatter:
    template = _CHANGE_TEMPLATE.replace("{up}", UP_COLOUR).replace("{down}", DOWN_COLOUR)
    return HTMLTemplateFormatter(template=template.replace("{expr}", expr))


def window_selector(window: str) -> RadioButtonGroup:
    return RadioButtonGroup(
        labels=[WINDOW_LABELS[w] for w in WINDOW_NAMES],
        active=WINDOW_NAMES.index(window),
        name="window",
    )


def mode_toggle() -> RadioButtonGroup:
    return RadioButtonGroup(labels=["Price", "% change"], active=0, name="mode")


def view_toggle() -> RadioButtonGroup:
    return RadioButtonGroup(labels=["Lines", "Candles"], active=0, name="view")


def candle_picker() -> Select:
    return Select(options=[], value="", name="candle_symbol", width=110, visible=False)


def stock_picker() -> MultiChoice:
    return MultiChoice(
        options=[],
        value=[],
        name="symbols",
        placeholder="Add a stock…",
        sizing_mode="stretch_width",
    )


def status_html(status: Status) -> str:
    """The indicator's markup: a coloured dot and words (the words carry the meaning)."""
    css, colour, words = STATUS_TEXT[status]
    # Inline style: a Div renders in a shadow root that page-wide CSS does not reach.
    return (
        f'<span class="status" data-status="{css}" style="font-weight:600;color:#333">'
        f'<span style="color:{colour};font-size:1.2em">●</span> {words}</span>'
    )


def status_div() -> Div:
    return Div(text=status_html(Status.CONNECTING), name="status")


def export_div() -> Div:
    """The link that downloads what the page shows as CSV (its href set by the session)."""
    return Div(text="", name="export")


def export_html(href: str) -> str:
    return f'<a href="{href}" download style="white-space:nowrap">Download CSV</a>'


def market_div() -> Div:
    """The closed-market banner (hidden while the market is open)."""
    return Div(text="", name="market", visible=False, sizing_mode="stretch_width")


def zone_toggle() -> RadioButtonGroup:
    """The exchange's time zone (first) or the browser's, for every time on the page."""
    return RadioButtonGroup(labels=["UTC", LOCAL_LABEL], active=1, name="timezone")


def closed_toggle() -> RadioButtonGroup:
    """Closed hours hidden (trading hours only) or shown (real time)."""
    return RadioButtonGroup(
        labels=["Trading hours", "Real time"], active=0, name="closed_hours", visible=False
    )


def latest_table() -> tuple[DataTable, ColumnDataSource, IndexFilter]:
    """A table of latest price, day change and 52-week range, one row per stock."""
    source = ColumnDataSource(
        {k: [] for k in TABLE_KEYS},
        name="latest_source",
    )
    # Widths are proportions of the table's width: numbers get no more room than they need.
    columns = [
        TableColumn(field="symbol", title="Symbol", width=70),
        TableColumn(field="name", title="Company", width=210),
        TableColumn(
            field="price",
            title="Price",
            width=100,
            formatter=NumberFormatter(format="$0,0.00", font_style="bold"),
        ),
        TableColumn(
            field="change",
            title="Day change",
            width=100,
            formatter=_change_formatter("value.toFixed(2)"),
        ),
        TableColumn(
            field="change_pct",
            title="Day %",
            width=100,
            formatter=_change_formatter("(value * 100).toFixed(2) + '%'"),
        ),
        TableColumn(field="range", title="52-week range", width=170),
        TableColumn(
            field="time",
            title="Last trade",
            width=110,
            formatter=HTMLTemplateFormatter(template=table_time_template(""), name="time_format"),
        ),
        TableColumn(
            field="source",
            title="Source",
            width=130,
            formatter=HTMLTemplateFormatter(template=SOURCE_TEMPLATE),
        ),
    ]
    shown = IndexFilter(indices=[])
    table = DataTable(
        source=source,
        columns=columns,
        view=CDSView(filter=shown),
        name="latest",
        index_position=None,
        height=60,
        sizing_mode="stretch_width",
        sortable=True,
        reorderable=False,
    )
    return table, source, shown


@dataclass
class Controls:
    """Everything on the page around the chart."""

    window: RadioButtonGroup
    mode: RadioButtonGroup
    view: RadioButtonGroup
    candle_symbol: Select
    picker: MultiChoice
    status: Div
    market: Div
    zone: RadioButtonGroup
    closed: RadioButtonGroup
    export: Div
    table: DataTable
    table_source: ColumnDataSource
    table_rows: IndexFilter

    @classmethod
    def build(cls, window: str) -> Controls:
        table, source, rows = latest_table()
        return cls(
            window_selector(window),
            mode_toggle(),
            view_toggle(),
            candle_picker(),
            stock_picker(),
            status_div(),
            market_div(),
            zone_toggle(),
            closed_toggle(),
            export_div(),
            table,
            source,
            rows,
        )

    def fit_table(self, rows: int) -> None:
        """As tall as its rows, no scrolling for a handful of stocks."""
        self.table.height = TABLE_HEADER_PX + TABLE_ROW_PX * rows

    def add_symbol(self, symbol: str) -> None:
        """A new stock becomes pickable (and picked) in both views."""
        self.picker.options = [*self.picker.options, symbol]
        self.picker.value = [*self.picker.value, symbol]
        self.candle_symbol.options = [*self.candle_symbol.options, symbol]
        if not self.candle_symbol.value:
            self.candle_symbol.value = symbol

    def remove_symbol(self, symbol: str) -> None:
        """A stock that left the watchlist can no longer be picked."""
        self.picker.value = [s for s in self.picker.value if s != symbol]
        self.picker.options = [s for s in self.picker.options if s != symbol]
        options: list[str | tuple[Any, str]] = [
            s for s in self.candle_symbol.options if isinstance(s, str) and s != symbol
        ]
        if self.candle_symbol.value == symbol:
            self.candle_symbol.value = options[0] if options else ""
        self.candle_symbol.options = options

    def page(self, chart: Plot, *panels: LayoutDOM) -> Column:
        """Title and indicator, controls, the chart, the table, then the panels side by side
        (candles go under the chart)."""
        heading = Div(text="<h2 style='margin:0'>stockstreamer</h2>", name="heading")
        times = Div(text="<span style='color:#444'>Times:</span>", name="times_label")
        return column(
            row(heading, self.status, sizing_mode="stretch_width"),
            self.market,
            row(
                self.window,
                self.mode,
                self.view,
                self.candle_symbol,
                self.picker,
                sizing_mode="stretch_width",
            ),
            row(self.closed, times, self.zone, self.export, sizing_mode="stretch_width"),
            chart,
            self.table,
            row(*panels, sizing_mode="stretch_width", name="panels"),
            sizing_mode="stretch_width",
        )
