"""The alerts panel: price alerts as they fire, and as browser notifications when allowed."""

from __future__ import annotations

import html
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime

from bokeh.layouts import column
from bokeh.models.callbacks import CustomJS
from bokeh.models.layouts import Column
from bokeh.models.sources import ColumnDataSource
from bokeh.models.widgets.buttons import Button
from bokeh.models.widgets.markups import Div
from pydantic import BaseModel, ConfigDict, Field

SHOWN = 20  # firings a page lists (newest first) and a new page starts with
NO_ALERTS = (
    "<span style='color:#777;font-size:13px'>No alert has fired since the dashboard started.</span>"
)
ASK_LABEL = "Allow browser notifications"

# The permission is asked on a click (browsers refuse to ask otherwise); the button says the answer.
ASK_JS = """
const label = (p) => p === 'granted' ? 'Browser notifications on'
  : p === 'denied' ? 'Browser notifications blocked (allow them in the site settings)'
  : button.label;
if (!('Notification' in window)) {
  button.label = 'This browser cannot show notifications';
  button.disabled = true;
} else if (ask) {
  Notification.requestPermission().then((p) => { button.label = label(p); });
} else {
  button.label = label(Notification.permission);
}
"""
# Each streamed row is one firing: a notification for it, tagged with its firing id so that every
# tab (and a repeated delivery) shows it once.
NOTIFY_JS = """
if (!('Notification' in window) || Notification.permission !== 'granted') return;
const data = source.data;
const i = data.firing_id.length - 1;
if (i < 0) return;
const tag = 'stockstreamer-alert-' + data.firing_id[i];
new Notification(data.title[i], {body: data.body[i], tag: tag});
"""


class Firing(BaseModel):
    """An `alert` event: one firing of a price alert (its `firing_id` is the same everywhere)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    firing_id: int
    alert_id: int
    symbol: str
    condition: str
    value: float
    price: float
    line: float
    ts: int = Field(description="Epoch milliseconds of the tick that fired it.")
    note: str | None = None
    channels: list[str] = Field(default_factory=list)


def title_of(firing: Firing) -> str:
    if firing.condition == "change_pct":
        return f"{firing.symbol} moved {firing.value:+g} %"
    return f"{firing.symbol} {firing.condition} {firing.line:,.2f}"


def body_of(firing: Firing) -> str:
    body = f"Price {firing.price:,.2f} crossed {firing.line:,.2f}"
    return f"{body} · {firing.note}" if firing.note else body


def firing_html(firing: Firing) -> str:
    at = datetime.fromtimestamp(firing.ts / 1000, UTC).strftime("%H:%M:%S UTC")
    return (
        f"<li class='firing' data-firing='{firing.firing_id}' data-symbol="
        f"'{html.escape(firing.symbol)}'><b>{html.escape(title_of(firing))}</b> "
        f"<span style='color:#555'>{html.escape(body_of(firing))} · {at}</span></li>"
    )


def list_html(firings: Iterable[Firing]) -> str:
    items = "".join(firing_html(f) for f in firings)
    if not items:
        return NO_ALERTS
    return f"<ul style='margin:0;padding-left:18px;font-size:13px'>{items}</ul>"


class AlertsPanel:
    """The newest firings, newest first, and the button that allows browser notifications."""

    def __init__(self, recent: Iterable[Firing] = ()) -> None:
        self.firings: deque[Firing] = deque(maxlen=SHOWN)  # oldest first
        self.firings.extend(recent)
        self.seen = {f.firing_id for f in self.firings}
        self.heading = Div(text="<h3 style='margin:4px 0'>Alerts</h3>", name="alerts_title")
        self.notify = Button(label=ASK_LABEL, name="notify_button", width=280)
        self.notify.js_on_click(CustomJS(args={"button": self.notify, "ask": True}, code=ASK_JS))
        self.list = Div(text=list_html(reversed(self.firings)), name="alerts")
        # Not drawn: the firings the browser is told about, one streamed row each.
        self.source = ColumnDataSource(
            {"firing_id": [], "title": [], "body": []}, name="alert_source"
        )
        self.source.js_on_change(
            "streaming", CustomJS(args={"source": self.source}, code=NOTIFY_JS)
        )
        # The source is drawn by nothing: the panel's tags keep it in the document (synced).
        self.root: Column = column(
            self.heading,
            self.notify,
            self.list,
            name="alerts_panel",
            tags=[self.source],
            width=320,  # beside the watchlist, which takes the rest of the row
        )

    def on_ready(self) -> CustomJS:
        """What the page runs once drawn: the button says whether notifications are on."""
        return CustomJS(args={"button": self.notify, "ask": False}, code=ASK_JS)

    def add(self, firing: Firing) -> bool:
        """Show a firing (once, whatever repeats it); False when it was shown already."""
        if firing.firing_id in self.seen:
            return False
        if len(self.firings) == self.firings.maxlen:
            self.seen.discard(self.firings[0].firing_id)
        self.firings.append(firing)
        self.seen.add(firing.firing_id)
        self.list.text = list_html(reversed(self.firings))
        row = {
            "firing_id": [firing.firing_id],
            "title": [title_of(firing)],
            "body": [body_of(firing)],
        }
        self.source.stream(row, rollover=SHOWN)
        return True
