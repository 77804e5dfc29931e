"""Times as the page shows them: the exchange's zone (or the browser's), the closed-market banner,
and the browser code that places and labels time ticks (real time or open time)."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from bokeh.models.formatters import CustomJSTickFormatter
from bokeh.models.tickers import CustomJSTicker
from bokeh.models.tools import CustomJSHover

from services.common.contract import Market
from services.dashboard.timeline import REAL, Timeline

ALWAYS = "24/7"
LOCAL = ""  # the browser's own zone, as the browser code takes it
LOCAL_LABEL = "Your local time"
WARNING_COLOUR = "#D55E00"
# How far ahead a weekday alone names the next open unambiguously.
WEEK = timedelta(days=6)


def zone_abbreviation(zone: str, at: datetime) -> str:
    """The zone's short name at `at`, generic for North American zones (EST and EDT: ET)."""
    name = at.astimezone(ZoneInfo(zone)).tzname() or zone
    generic = re.fullmatch(r"([A-Z]{1,2})[SD]T", name)
    if generic and zone.startswith(("America/", "US/", "Canada/")):
        return f"{generic.group(1)}T"
    return name


def zone_label(zone: str, at: datetime | None = None) -> str:
    """How the page names an exchange's zone: "New York (ET)", or "UTC"."""
    if zone.upper() in {"UTC", "ETC/UTC", "GMT"}:
        return "UTC"
    city = zone.rsplit("/", 1)[-1].replace("_", " ")
    return f"{city} ({zone_abbreviation(zone, at or datetime.now(UTC))})"


def is_always_open(market: Market | None) -> bool:
    """True for a market that never closes (the simulator's 24/7), or one not known yet."""
    return market is None or market.calendar == ALWAYS or market.next_open is None


def default_zone(market: Market | None) -> str:
    """The zone times are shown in first: the exchange's own; the browser's for 24/7."""
    return LOCAL if is_always_open(market) or market is None else market.timezone


def opens_text(market: Market, now: datetime) -> str:
    """ "opens Mon 09:30 ET" (a date too when more than six days away)."""
    if market.next_open is None:
        return ""
    zone = ZoneInfo(market.timezone)
    local = market.next_open.astimezone(zone)
    day = local.strftime("%a") if market.next_open - now <= WEEK else local.strftime("%a %-d %b")
    return f"opens {day} {local:%H:%M} {zone_abbreviation(market.timezone, market.next_open)}"


def banner_html(market: Market | None, now: datetime | None = None) -> str:
    """The closed-market banner's markup; empty while the market is open (and for 24/7)."""
    if market is None or market.is_open or market.calendar == ALWAYS:
        return ""
    when = opens_text(market, now or datetime.now(UTC))
    words = f"Market closed — {when}" if when else "Market closed"
    return (
        f'<div class="market" data-market="closed" title="{html.escape(market.calendar)}" '
        'style="background:#fff4e5;border-left:4px solid #E69F00;padding:6px 12px;'
        f'font-weight:600;color:#333">{html.escape(words)}</div>'
    )


# -- the browser's side: ticks and labels ----------------------------------------------------
# Shared by the ticker and the formatter. Args: opens, closes, starts (the session table, empty
# for real time), day (a session's length), tz (an IANA zone; "" for the browser's own).
_PRELUDE = """
const N = opens.length, MIN = 60e3, HOUR = 3600e3, DAY = 86400e3;
const zone = tz || undefined;
const find = (xs, v) => {  // the last index whose value is <= v (0 when none)
  let lo = 0, hi = xs.length - 1;
  while (lo < hi) { const m = (lo + hi + 1) >> 1; if (xs[m] <= v) lo = m; else hi = m - 1; }
  return lo;
};
const to_ts = (x) => {
  if (N == 0) return x;
  const i = find(starts, x), t = opens[i] + x - starts[i];
  return i == N - 1 ? t : Math.min(t, closes[i]);
};
const to_x = (t) => {
  if (N == 0) return t;
  if (t < opens[0]) return 0;
  const i = find(opens, t);
  return starts[i] + Math.min(t, closes[i]) - opens[i];
};
const parts_of = new Intl.DateTimeFormat('en-US', {timeZone: zone, hourCycle: 'h23',
  year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric',
  second: 'numeric'});
const wall = (t) => {  // the zone's wall clock at t, as if it were UTC
  const p = {};
  for (const {type, value} of parts_of.formatToParts(new Date(t))) p[type] = value;
  return Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour % 24, +p.minute, +p.second)
    + (t % 1000 + 1000) % 1000;
};
const unwall = (w) => {  // the time whose wall clock reads w (twice around a DST change)
  let t = w - (wall(w) - w);
  return t - (wall(t) - w);
};
"""

_TICKS = (
    _PRELUDE
    + """
const {start, end} = cb_data;
if (!(end > start)) return [];
const target = (end - start) / 7;
const STEPS = [1e3, 5e3, 15e3, 30e3, MIN, 2*MIN, 5*MIN, 10*MIN, 15*MIN, 30*MIN,
               HOUR, 2*HOUR, 3*HOUR, 6*HOUR, 12*HOUR];
const step = STEPS.find((s) => s >= target) || 12 * HOUR;
const every = (a, b, s) => {  // wall-clock multiples of s (under a day) in [a, b]
  const out = [];
  for (let w = Math.ceil(wall(a) / s) * s; out.length < 500; w += s) {
    const t = unwall(w);
    if (t > b) break;
    if (t >= a) out.push(t);
  }
  return out;
};
const day_of = (t) => Math.floor(wall(t) / DAY);  // days since 1970-01-01, in the zone
const date_of = (t) => new Date(wall(t));  // read with getUTC*: the zone's calendar date
const month_of = (t) => date_of(t).getUTCFullYear() * 12 + date_of(t).getUTCMonth();
const firsts = (times, key, k) => {  // the first of each group, every k-th group
  const out = [];
  let last = null, n = 0;
  for (const t of times) {
    const g = key(t);
    if (g !== last) { if (n++ % k == 0) out.push(t); last = g; }
  }
  return out;
};
if (N == 0) {
  if (target < 18 * HOUR) return every(start, end, step);
  const days = [];
  for (let d = day_of(start); days.length < 800; d++) {
    const t = unwall(d * DAY);
    if (t > end) break;
    if (t >= start) days.push(t);
  }
  const per = target / DAY;
  if (per <= 1.5) return days;
  if (per <= 3) return firsts(days, day_of, 2);
  if (per <= 10) return days.filter((t) => ((day_of(t) - 4) % 7 + 7) % 7 == 0);  // Mondays
  const months = per <= 45 ? 1 : per <= 120 ? 3 : 12;
  return days.filter((t) => date_of(t).getUTCDate() == 1 && month_of(t) % months == 0);
}
// closed hours collapsed: x is open time; ticks at session opens, or clock times inside them
const visible = [];
for (let i = 0; i < N; i++) {
  if (starts[i] + closes[i] - opens[i] >= start && starts[i] <= end) visible.push(i);
}
if (target < 0.6 * day) {
  const out = [];
  for (const i of visible) {
    if (starts[i] >= start) out.push(starts[i]);
    for (const t of every(opens[i], closes[i], step)) {
      if (t - opens[i] >= step / 2 && t < closes[i]) {
        const x = to_x(t);
        if (x >= start && x <= end) out.push(x);
      }
    }
  }
  return out;
}
const per = target / day;  // sessions per tick
const shown = visible.filter((i) => starts[i] >= start).map((i) => opens[i]);
const week_of = (t) => Math.floor((day_of(t) - 4) / 7);
const quarter_of = (t) => Math.floor(month_of(t) / 3);
const year_of = (t) => Math.floor(month_of(t) / 12);
const picked = per <= 1.5 ? shown : per <= 3 ? firsts(shown, day_of, 2)
  : per <= 8 ? firsts(shown, week_of, 1) : per <= 30 ? firsts(shown, month_of, 1)
  : per <= 90 ? firsts(shown, quarter_of, 1) : firsts(shown, year_of, 1);
return picked.map(to_x);
"""
)

_LABELS = (
    _PRELUDE
    + """
if (this.mode === undefined) {
  let gap = Infinity;
  for (let i = 1; i < ticks.length; i++) gap = Math.min(gap, ticks[i] - ticks[i - 1]);
  // session opens only (collapsed) are days, whatever a half day makes the gap
  const opens_only = N > 0 && ticks.length > 0 && ticks.every((x) => starts.includes(x));
  const month = N ? 15 * day : 25 * DAY;
  this.mode = gap >= month ? 'month' : opens_only || gap >= 0.6 * DAY ? 'day' : 'time';
  this.date = new Intl.DateTimeFormat('en-GB', {timeZone: zone, weekday: 'short',
    day: 'numeric', month: 'short'});
  this.month = new Intl.DateTimeFormat('en-GB', {timeZone: zone, month: 'short',
    year: 'numeric'});
  this.time = new Intl.DateTimeFormat('en-GB', {timeZone: zone, hour: '2-digit',
    minute: '2-digit', hourCycle: 'h23'});
  this.day = new Intl.DateTimeFormat('en-CA', {timeZone: zone});
}
const t = to_ts(tick);
if (this.mode == 'month') return this.month.format(t);
if (this.mode == 'day') return this.date.format(t);
const same = index > 0 && this.day.format(to_ts(ticks[index - 1])) == this.day.format(t);
return same ? this.time.format(t) : this.time.format(t) + '\\n' + this.date.format(t);
"""
)

# A tooltip's time: "Mon 5 Jan 2026, 14:31:05 ET"-like, in the zone shown.
_HOVER = """
const zone = tz || undefined;
const text = new Intl.DateTimeFormat('en-GB', {timeZone: zone, weekday: 'short', day: 'numeric',
  month: 'short', year: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
  hourCycle: 'h23'}).format(value);
const name = new Intl.DateTimeFormat('en-US', {timeZone: zone, timeZoneName: 'short'})
  .formatToParts(value).find((p) => p.type == 'timeZoneName');
return name ? text + ' ' + name.value : text;
"""


def table_time_template(zone: str) -> str:
    """A table cell's time (weekday and clock) in `zone`, for an HTMLTemplateFormatter."""
    options = {"weekday": "short", "hour": "2-digit", "minute": "2-digit", "second": "2-digit"}
    options["hourCycle"] = "h23"
    if zone:
        options["timeZone"] = zone
    return (
        "<% if (value > 0) { %><span class=\"time\"><%= new Intl.DateTimeFormat('en-GB', "
        + json.dumps(options)
        + ").format(new Date(value)) %></span><% } else { %>—<% } %>"
    )


class TimeAxis:
    """The ticker, label formatter and tooltip formatter of one figure's time axis."""

    def __init__(self, name: str) -> None:
        args = self.args(REAL, LOCAL)
        self.ticker = CustomJSTicker(args=args, major_code=_TICKS, name=f"{name}_ticker")
        self.formatter = CustomJSTickFormatter(args=args, code=_LABELS, name=f"{name}_labels")
        self.hover = CustomJSHover(args={"tz": LOCAL}, code=_HOVER)

    @staticmethod
    def args(timeline: Timeline, zone: str) -> dict[str, object]:
        return {**timeline.args(), "tz": zone}

    def show(self, timeline: Timeline, zone: str) -> None:
        """Place and label ticks by `timeline`, in `zone` ("" for the browser's)."""
        args = self.args(timeline, zone)
        if self.ticker.args != args:
            self.ticker.args = args
            self.formatter.args = args
        if self.hover.args.get("tz") != zone:
            self.hover.args = {"tz": zone}
