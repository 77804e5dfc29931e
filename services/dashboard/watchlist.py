"""The watchlist panel: every tracked symbol and where it is on its way in, with add and remove."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from bokeh.layouts import column, row
from bokeh.models.layouts import Column, Row
from bokeh.models.widgets.buttons import Button
from bokeh.models.widgets.inputs import TextInput
from bokeh.models.widgets.markups import Div
from pydantic import BaseModel, ConfigDict, field_validator

from services.dashboard.clock import WARNING_COLOUR
from services.dashboard.shaping import DOWN_COLOUR, UP_COLOUR

State = Literal["pending", "backfilling", "live", "rejected", "removed"]
DRAWN: frozenset[str] = frozenset({"backfilling", "live"})  # states that have data to draw
TOKEN_SETTINGS = "STOCKSTREAMER_DASHBOARD_API_TOKEN_FILE (or STOCKSTREAMER_DASHBOARD_API_TOKEN)"  # noqa: S105
NO_TOKEN_NOTE = (
    "<span style='color:#555;font-size:12px'>To add and remove stocks here, give the dashboard an "
    f"API write token: {TOKEN_SETTINGS}.</span>"
)
CONFIG_NOTE = "set in STOCKSTREAMER_SYMBOLS"
CONFIG_WHY = "Configured in STOCKSTREAMER_SYMBOLS: remove it there and restart the fetcher."
STATE_STYLE = {
    "pending": ("◌", "#56B4E9"),
    "backfilling": ("◐", "#E69F00"),
    "live": ("●", UP_COLOUR),
    "rejected": ("✕", DOWN_COLOUR),
}


class Watch(BaseModel):
    """A symbol's place in the watchlist: the `Stock` resource's state, progress, reason, origin."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    symbol: str
    # An API from before the watchlist lists only stocks it serves: live ones.
    state: State = "live"
    progress: float | None = None
    reason: str | None = None
    origin: Literal["config", "api"] | None = None

    @field_validator("state", mode="before")
    @classmethod
    def _live_when_unsaid(cls, value: object) -> object:
        return "live" if value is None else value

    @property
    def drawn(self) -> bool:
        """Whether the symbol has (or is getting) data: a line on the chart."""
        return self.state in DRAWN


def watch_of(payload: dict[str, Any], known: Watch | None = None) -> Watch:
    """The watchlist fields of a stock payload; those it leaves out keep their known values."""
    fields = {k: payload[k] for k in Watch.model_fields if k in payload}
    return Watch.model_validate({**known.model_dump(), **fields} if known else fields)


def entry_html(watch: Watch, removable: bool) -> str:
    """One symbol's line in the panel: its state in words (and colour), and why it stays."""
    mark, colour = STATE_STYLE.get(watch.state, ("?", "#555"))
    words: str = watch.state
    if watch.state == "backfilling" and watch.progress is not None:
        words = f"backfilling {watch.progress * 100:.0f} %"
    elif watch.state == "rejected" and watch.reason:
        words = f"rejected: {watch.reason}"
    symbol = html.escape(watch.symbol)
    extra = ""
    if removable and watch.origin == "config":
        extra = (
            f" <span class='why' title='{html.escape(CONFIG_WHY)}' style='color:#777;"
            f"font-size:12px'>· {CONFIG_NOTE}</span>"
        )
    return (
        f"<span class='watch' data-symbol='{symbol}' data-state='{html.escape(watch.state)}' "
        f"style='white-space:nowrap'><b style='display:inline-block;min-width:64px'>{symbol}</b>"
        f"<span style='color:{colour}'>{mark}</span> {html.escape(words)}{extra}</span>"
    )


def message_html(text: str, ok: bool) -> str:
    colour = "#333" if ok else WARNING_COLOUR
    kind = "ok" if ok else "error"
    return (
        f"<span class='message' data-kind='{kind}' style='color:{colour};font-size:13px'>"
        f"{html.escape(text)}</span>"
    )


@dataclass
class Entry:
    """The models of one symbol's line in the panel."""

    row: Row
    label: Div
    remove: Button | None


class WatchlistPanel:
    """The symbols, as the watchlist has them; an input and buttons when writes are possible."""

    def __init__(self, writable: bool, on_remove: Callable[[str], None]) -> None:
        self.writable = writable
        self.on_remove = on_remove
        self.heading = Div(text="<h3 style='margin:4px 0'>Watchlist</h3>", name="watchlist_title")
        self.symbol = TextInput(
            placeholder="Symbol, e.g. AMD", name="add_symbol", width=140, visible=writable
        )
        self.add = Button(label="Add", name="add_button", width=70, visible=writable)
        self.message = Div(text="", name="watchlist_message")
        # (wraps within the panel: a Div without a width grows to its text's one line)
        self.note = Div(
            text="" if writable else NO_TOKEN_NOTE,
            name="watchlist_note",
            sizing_mode="stretch_width",
        )
        self.rows = column([], name="watchlist_rows")
        self.entries: dict[str, Entry] = {}
        self.root: Column = column(
            self.heading,
            row(self.symbol, self.add, self.message),
            self.note,
            self.rows,
            name="watchlist",
            min_width=360,
            sizing_mode="stretch_width",
        )

    def show(self, watch: Watch) -> None:
        """Show `watch`: a new line in symbol order, or its line updated."""
        entry = self.entries.get(watch.symbol)
        removable = self.writable and watch.origin == "api"
        text = entry_html(watch, self.writable)
        if entry is not None and (entry.remove is not None) == removable:
            if entry.label.text != text:
                entry.label.text = text
            return
        label = Div(text=text, name=f"watch_{watch.symbol}")
        remove = None
        if removable:
            # named for its symbol: a button read out alone (by a screen reader) says what it does
            remove = Button(label=f"Remove {watch.symbol}", name=f"remove_{watch.symbol}")
            # Before it joins the page: a model goes to the browser as it is when it joins, and
            # without its click subscription the browser would never say it was clicked.
            remove.on_click(partial(self.on_remove, watch.symbol))
        self.entries[watch.symbol] = Entry(
            row([label, *([remove] if remove else [])]), label, remove
        )
        self.rows.children = [self.entries[s].row for s in sorted(self.entries)]

    def drop(self, symbol: str) -> None:
        """`symbol` left the watchlist."""
        if self.entries.pop(symbol, None) is not None:
            self.rows.children = [self.entries[s].row for s in sorted(self.entries)]

    def say(self, text: str, ok: bool = True) -> None:
        """A word next to the input: what an add or remove did, or the API's reason it did not."""
        self.message.text = message_html(text, ok) if text else ""
