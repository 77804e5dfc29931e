"""One browser tab: builds the page, loads history, and applies the feed's events to it.

A page build makes the page's models (a line and a row per stock, empty): the session starts
(live prices, its first history load) when the browser says the page is drawn (`DocumentReady`),
so a page that never connects costs its models and nothing else: no API request, no share of
the feed's fan-out. A started session is in one of three phases. WAITING: nothing loaded
yet, or the last load failed; it loads again as soon as it can. LOADING: one history load is in
flight (a newer load cancels it, and its HTTP request with it); live prices wait for it.
SHOWING: history is drawn and live prices stream in.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Coroutine, Sequence
from enum import Enum
from functools import partial
from typing import Any, cast

from bokeh.document import Document
from bokeh.events import DocumentReady
from bokeh.models.widgets.markups import Div
from bokeh.models.widgets.tables import HTMLTemplateFormatter

from services.common.contract import Bars, Market, Prices, Sessions, Stock
from services.dashboard.alerts import AlertsPanel
from services.dashboard.candles import CANDLES, CandleChart, candle_columns
from services.dashboard.chart import PriceChart
from services.dashboard.client import ApiError, Written
from services.dashboard.clock import (
    LOCAL,
    LOCAL_LABEL,
    banner_html,
    default_zone,
    is_always_open,
    table_time_template,
    zone_label,
)
from services.dashboard.export import export_href
from services.dashboard.feed import (
    AlertEvent,
    Event,
    MarketEvent,
    PriceEvent,
    ReloadEvent,
    RemovedEvent,
    Status,
    StatusEvent,
    StockEvent,
)
from services.dashboard.runtime import Runtime
from services.dashboard.shaping import (
    DAY_MS,
    WINDOWS,
    Point,
    band_columns,
    bucket_ms,
    logo_columns,
    logo_index,
    merge_ticks,
    rollover_for,
    series_columns,
    table_row,
)
from services.dashboard.timeline import REAL, Timeline
from services.dashboard.watchlist import Watch, WatchlistPanel
from services.dashboard.widgets import (
    MODES,
    VIEWS,
    WINDOW_NAMES,
    Controls,
    export_html,
    status_html,
)

log = logging.getLogger(__name__)

# Events queued for a tab that is not keeping up; past this we drop them and reload instead.
MAX_PENDING = 20_000
# Widget changes this close together (seconds) make one history load, for the last of them.
DEBOUNCE = 0.3
# Loads the feed asks for (history rewritten, a reset, a fresh stream): the first at once, then
# at most one per this many seconds after the last load began, whatever the feed sends.
FEED_RELOAD_EVERY = 5.0
BUSY_NOTICE = (
    "<h2>stockstreamer</h2><p data-status='busy'>This dashboard is serving as many viewers as it "
    "can right now. Please try again in a minute.</p>"
)


Loaded = tuple[Prices, Bars | None, Sessions | None]


class Phase(Enum):
    WAITING = "waiting"
    LOADING = "loading"
    SHOWING = "showing"


class Inbox:
    """Events from the feed, outside the document lock, until one scheduled flush takes them."""

    def __init__(self, doc: Document, flush: Callable[[list[Event]], None]) -> None:
        self.doc = doc
        self.flush = flush
        self.events: deque[Event] = deque()
        self.scheduled = False

    def put(self, event: Event) -> None:
        if len(self.events) >= MAX_PENDING:
            # This tab fell far behind: drop its queued ticks and reload the window instead.
            self.events = deque(e for e in self.events if not isinstance(e, PriceEvent))
            self.events.append(ReloadEvent(None))
        self.events.append(event)
        if not self.scheduled:
            self.scheduled = True
            self.doc.add_next_tick_callback(self._take)

    def _take(self) -> None:
        self.scheduled = False
        events, self.events = list(self.events), deque()
        self.flush(events)


class DashboardSession:
    """The models of one document and the only code that changes them."""

    feed_reload_every = FEED_RELOAD_EVERY

    def __init__(self, doc: Document, runtime: Runtime, client: str | None = None) -> None:
        self.doc = doc
        self.runtime = runtime
        self.client = client  # the viewer's address: the API counts its history loads to it
        self.started = False
        self.window: str = runtime.settings.dashboard_window
        self.view = VIEWS[0]
        self.max_points = runtime.settings.dashboard_max_points
        self.bucket = bucket_ms(WINDOWS[self.window], self.max_points)
        self.rollover = rollover_for(WINDOWS[self.window], self.bucket, self.max_points)
        self.stocks: dict[str, Stock] = {}  # the stocks drawn: a line and a row each
        self.watch: dict[str, Watch] = {}  # every symbol of the watchlist, drawn or not
        self.writes: set[asyncio.Task[None]] = set()  # adds and removes on their way to the API
        self.bases: dict[str, float | None] = {}
        self.rows: dict[str, int] = {}
        self.phase = Phase.WAITING
        self.held: list[PriceEvent] = []  # live prices that arrived while LOADING
        self.load: asyncio.Task[None] | None = None
        self.later: asyncio.TimerHandle | None = None  # a load put off (debounced, throttled)
        self.last_load = -math.inf  # monotonic time the last load began
        self.inbox = Inbox(doc, self._flush)
        self.market: Market | None = runtime.feed.market
        self.timeline = REAL  # the lines' time axis, as of the last load
        self.zone = LOCAL  # the zone times are shown in ("" for the browser's)
        self.chosen: set[str] = set()  # the time toggles the viewer set (kept over defaults)
        self.defaulting = False

        self.chart = PriceChart(self.window)
        self.candles: CandleChart | None = None  # made when the candle view is first shown
        self.ui = Controls.build(self.window)
        self.ui.window.on_change("active", self._on_window)
        self.ui.mode.on_change("active", self._on_mode)
        self.ui.view.on_change("active", self._on_view)
        self.ui.candle_symbol.on_change("value", self._on_candle_symbol)
        self.ui.picker.on_change("value", self._on_pick)
        self.ui.zone.on_change("active", self._on_zone)
        self.ui.closed.on_change("active", self._on_closed)
        # Writes only with a token, which stays in this process: the page never sees it.
        writable = runtime.settings.write_token() is not None
        self.watchlist = WatchlistPanel(writable, on_remove=self._on_remove)
        self.watchlist.add.on_click(self._on_add)
        self.alerts = AlertsPanel(runtime.feed.firings)
        doc.js_on_event(DocumentReady, self.alerts.on_ready())
        doc.title = "stockstreamer · live stock prices"

        self.layout = self.ui.page(self.chart.figure, self.watchlist.root, self.alerts.root)
        # One model-graph recomputation for the whole page instead of one per property set
        # (which made a page take seconds to open).
        with doc.models.freeze():
            doc.add_root(self.layout)
            for stock in sorted(runtime.feed.stocks.values(), key=lambda s: s.symbol):
                self._apply_stock(stock, runtime.feed.watch.get(stock.symbol))
            self._market_defaults()
            self._show_export()
        self._show_status(runtime.feed.status)
        doc.on_event(DocumentReady, self._ready)

    def _ready(self, _event: object) -> None:
        """The browser drew the page: from now on it gets live prices and history."""
        if self.started:
            return
        self.started = True
        feed = self.runtime.feed
        if feed.sessions >= self.runtime.settings.dashboard_max_sessions:
            # Pages built while the last places were free, connecting together: past the cap,
            # a notice (and nothing held) beats a process that slows down for everyone.
            self.runtime.metrics.pages_refused.labels("sessions").inc()
            self.doc.clear()
            self.doc.add_root(Div(text=BUSY_NOTICE, name="busy"))
            return
        for symbol in [s for s in self.watch if s not in feed.stocks]:
            self._drop(symbol)  # removed since the page was built
        for stock in sorted(feed.stocks.values(), key=lambda s: s.symbol):
            # changed since the page was built; unfrozen, as in `_update_stock`
            self._apply_stock(stock, feed.watch.get(stock.symbol))
        if feed.market != self.market:
            self.market = feed.market
            with self.doc.models.freeze():
                self._market_defaults()
        self._show_status(feed.status)
        feed.subscribe(self.deliver)
        self.reload()

    # -- from the feed (outside the document lock) -------------------------------------------
    def deliver(self, event: Event) -> None:
        """Queue an event for the next flush; never touches models."""
        self.inbox.put(event)

    def close(self) -> None:
        """The session is gone (`app_hooks.on_session_destroyed`): stop everything it started."""
        self.runtime.feed.unsubscribe(self.deliver)
        for task in self.writes:
            task.cancel()
        if self.load is not None:
            self.load.cancel()
        if self.later is not None:
            self.later.cancel()

    # -- under the document lock -------------------------------------------------------------
    def _flush(self, events: list[Event]) -> None:
        ticks: dict[str, list[Point]] = defaultdict(list)
        received: list[float] = []
        for event in events:
            if isinstance(event, PriceEvent):
                if self.phase is Phase.LOADING:
                    self._hold(event)
                else:
                    ticks[event.symbol].append(event.point)
                    received.append(event.received)
                    if self.later is not None:
                        # Drawn now, and again after the load that is coming replaces the
                        # lines (where a tick its history already has is not drawn twice).
                        self._hold(event)
            elif isinstance(event, StockEvent):
                self._update_stock(event.stock, event.watch)
            elif isinstance(event, RemovedEvent):
                self._drop(event.symbol)
            elif isinstance(event, AlertEvent):
                self.alerts.add(event.firing)
            elif isinstance(event, ReloadEvent):
                if self._overlaps(event):
                    self._reload_for_feed()
            elif isinstance(event, MarketEvent):
                self._update_market(event.market)
            elif isinstance(event, StatusEvent):
                self._show_status(event.status)
                if event.status is Status.LIVE and self.phase is Phase.WAITING:
                    self.reload()
        self._apply_ticks(ticks)
        pushed = time.monotonic()
        for arrived in received:
            self.runtime.metrics.receipt_to_push.observe(pushed - arrived)
        self.runtime.metrics.ticks_delivered.inc(sum(len(points) for points in ticks.values()))

    def _hold(self, event: PriceEvent) -> None:
        if len(self.held) >= MAX_PENDING:
            self.held.clear()
            self.reload()  # far more arrived than a load takes: load again, from now
        self.held.append(event)

    def _apply_ticks(self, ticks: dict[str, list[Point]]) -> None:
        """Stream new points (and move each line's last one); whole arrays are never re-sent."""
        for symbol, points in ticks.items():
            candles = self.candles
            if (
                candles is not None
                and self.view == "candles"
                and symbol == self.ui.candle_symbol.value
            ):
                for point in points:
                    candles.apply(point.ts, point.price, 2 * CANDLES)
            line = self.chart.lines.get(symbol)
            if line is None or not points:
                continue
            data = line.source.data
            last_ts = data["ts"][-1] if len(data["ts"]) else None
            merge = merge_ticks(last_ts, self.bucket, points)
            if merge.replace_last is None and not merge.append:
                continue
            if self.bases.get(symbol) is None:
                first = merge.replace_last or merge.append[0]
                self.bases[symbol] = first.price
                self._refresh_bands()
            base = self.bases[symbol] or 1.0
            x = self.timeline.x
            if merge.replace_last is not None:
                i, p = len(data["ts"]) - 1, merge.replace_last
                line.source.patch(
                    {
                        "ts": [(i, p.ts)],
                        "x": [(i, x(p.ts))],
                        "price": [(i, p.price)],
                        "pct": [(i, p.price / base - 1)],
                    }
                )
            if merge.append:
                new = {
                    "ts": [p.ts for p in merge.append],
                    "x": [x(p.ts) for p in merge.append],
                    "price": [p.price for p in merge.append],
                    "pct": [p.price / base - 1 for p in merge.append],
                }
                line.source.stream(new, rollover=self.rollover)
                self._move_logo(symbol)
            latest = merge.append[-1] if merge.append else merge.replace_last
            if latest is not None:
                self._patch_row(symbol, latest)

    # -- history -----------------------------------------------------------------------------
    def _reload_soon(self) -> None:
        """A widget changed: load once the changes stop for DEBOUNCE, not once per click."""
        self._reload_in(DEBOUNCE)

    def _reload_for_feed(self) -> None:
        """The feed asks for a load: at once, or once FEED_RELOAD_EVERY after the last began."""
        if self.later is not None:
            return  # one is coming: it loads whatever this one would
        wait = self.last_load + self.feed_reload_every - time.monotonic()
        if wait <= 0:
            self.reload()
        else:
            self._reload_in(wait)

    def _reload_in(self, delay: float) -> None:
        if self.later is not None:
            self.later.cancel()
        self.later = asyncio.get_running_loop().call_later(delay, self._reload_due)

    def _reload_due(self) -> None:
        # A plain event-loop callback, outside the document lock: the load starts under it.
        self.later = None
        self.doc.add_next_tick_callback(self.reload)

    def reload(self) -> None:
        """Load the window's history for every line (and the candles when shown), off the lock.

        A load still in flight is for an older window or older data: it is cancelled, and its
        HTTP request closed, so the API stops working on it.
        """
        if self.load is not None:
            self.load.cancel()
            self.load = None
        if self.later is not None:
            self.later.cancel()
            self.later = None
        self.last_load = time.monotonic()
        symbols = list(self.chart.lines)
        if not symbols:
            self.phase = Phase.WAITING  # nothing known yet: the first stock events bring some
            return
        self.phase = Phase.LOADING
        candle = self.ui.candle_symbol.value if self.view == "candles" else None
        self.load = asyncio.get_running_loop().create_task(
            self._fetch(symbols, WINDOWS[self.window], candle or None, self._collapsing()),
            name="history",
        )

    async def _fetch(
        self, symbols: list[str], window_ms: int, candle: str | None, collapse: bool
    ) -> None:
        api, max_points, viewer = self.runtime.client, self.max_points, self.client
        now = int(time.time() * 1000)
        start = now - window_ms
        result: Loaded | ApiError
        try:
            prices = await api.prices(symbols, start, None, max_points, client=viewer)
            bars = await api.bars(candle, start, CANDLES, client=viewer) if candle else None
            sessions = None
            if collapse:
                try:
                    sessions = await api.sessions(start, now, client=viewer)
                except ApiError as exc:  # the lines in real time beat no lines
                    log.warning("market sessions not loaded", extra={"error": str(exc)})
            result = (prices, bars, sessions)
        except ApiError as exc:
            result = exc
        task = asyncio.current_task()
        self.doc.add_next_tick_callback(partial(self._loaded, task, result))

    def _loaded(self, task: asyncio.Task[Any] | None, result: Loaded | ApiError) -> None:
        if task is not self.load:
            return  # superseded while its result was on its way
        self.load = None
        if isinstance(result, ApiError):
            log.warning("history not loaded", extra={"error": str(result)})
            self.phase = Phase.WAITING
        else:
            self.phase = Phase.SHOWING
            self._draw_history(*result)
        held, self.held = self.held, []
        ticks: dict[str, list[Point]] = defaultdict(list)
        for event in held:
            ticks[event.symbol].append(event.point)
        self._apply_ticks(ticks)

    def _draw_history(self, prices: Prices, bars: Bars | None, sessions: Sessions | None) -> None:
        series = {s.symbol: s for s in prices.series}
        # History comes at most max_points per window (downsampled by the API when denser);
        # live ticks are merged to the same density, so a line keeps about one window.
        window_ms = WINDOWS[self.window]
        self.bucket = bucket_ms(window_ms, self.max_points)
        self.rollover = rollover_for(window_ms, self.bucket, self.max_points)
        self.timeline = self._timeline(sessions)
        end = sessions.end if sessions is not None else prices.end
        self.chart.set_window(self.window, self._width(end))
        for symbol, line in self.chart.lines.items():
            try:
                cols = series_columns(series.get(symbol))
            except ValueError as exc:  # one bad series must not stop the rest
                log.warning("bad history series", extra={"symbol": symbol, "error": repr(exc)})
                cols = series_columns(None)
            cols["x"] = self.timeline.xs(cols["ts"])
            line.source.data = cols
            self.bases[symbol] = cols["price"][0] if cols["price"] else None
        self.chart.set_marker_size(max((len(s.ts) for s in series.values()), default=0))
        self._refresh_bands()
        self._place_logos()
        if bars is not None:
            self._draw_candles(bars)
        self._show_times()  # the lines' and the candles' axes, on their new timelines

    def _draw_candles(self, bars: Bars) -> None:
        width = bars.interval_ms
        first = bars.series[0] if bars.series else None
        candles = self._candle_chart()
        try:
            candles.set_bars(candle_columns(first, width, self.timeline), width, self.timeline)
        except ValueError as exc:
            log.warning("bad bars series", extra={"error": repr(exc)})
        candles.show(first.symbol if first else None, self.window, bars.interval)
        self._show_export(bars.interval)

    def _candle_chart(self) -> CandleChart:
        """The candle view, made (and put under the lines' chart) the first time it is needed."""
        if self.candles is None:
            self.candles = CandleChart()
            children = list(self.layout.children)
            at = children.index(self.chart.figure) + 1
            self.layout.children = [*children[:at], self.candles.figure, *children[at:]]
            self._show_times()
        return self.candles

    def _overlaps(self, event: ReloadEvent) -> bool:
        if event.symbols is not None and not event.symbols & self.chart.lines.keys():
            return False
        start = int(time.time() * 1000) - WINDOWS[self.window]
        return event.end is None or event.end >= start

    # -- stocks, bands, logos, table ---------------------------------------------------------
    def _ordered(self) -> Sequence[Stock]:
        return [self.stocks[symbol] for symbol in self.chart.lines]

    def _add_stock(self, stock: Stock) -> None:
        symbol = stock.symbol
        self.stocks[symbol] = stock
        self.chart.add_line(symbol, self.chart.free_colour())
        self.rows[symbol] = len(self.rows)
        self.ui.fit_table(len(self.rows))
        self.ui.table_source.stream({k: [v] for k, v in table_row(stock).items()})
        self.ui.add_symbol(symbol)
        self._refresh_bands()

    def _update_stock(self, stock: Stock, watch: Watch | None) -> None:
        """A stock event: the watchlist's line, and the stock's line when it has data."""
        before = self.watch.get(stock.symbol)
        # Not frozen: with the page shown, a new model must be in the document before more is
        # set on it (a line's links, a button's subscription), or the browser never hears of it.
        added = self._apply_stock(stock, watch)
        if added:
            self._reload_soon()  # its history, too (one load for a burst of new stocks)
        elif (
            before is not None
            and before.state == "backfilling"
            and self.watch[stock.symbol].state == "live"
        ):
            self._reload_for_feed()  # its backfill is complete: all of its history

    def _apply_stock(self, stock: Stock, watch: Watch | None) -> bool:
        """Show `stock` as the watchlist has it; True when it became a line (to load)."""
        symbol = stock.symbol
        watch = watch or Watch(symbol=symbol)
        self.watch[symbol] = watch
        self.watchlist.show(watch)
        if not watch.drawn:
            self._remove_stock(symbol)  # no data (yet, or any more): no line
            return False
        if symbol not in self.stocks:
            self._add_stock(stock)
            return True
        self._sync_stock(stock)
        return False

    def _drop(self, symbol: str) -> None:
        """`symbol` left the watchlist: its line, band, logo, row and entry go at once."""
        self.watch.pop(symbol, None)
        with self.doc.models.freeze():
            self.watchlist.drop(symbol)
            self._remove_stock(symbol)

    def _remove_stock(self, symbol: str) -> None:
        if self.stocks.pop(symbol, None) is None:
            return
        self.bases.pop(symbol, None)
        self.held = [e for e in self.held if e.symbol != symbol]
        self.chart.remove_line(symbol)
        # The table without its row (the others keep their live prices); rows after it move up.
        gone = self.rows.pop(symbol)
        table = self.ui.table_source
        table.data = {k: [v for i, v in enumerate(vs) if i != gone] for k, vs in table.data.items()}
        self.rows = {s: i - (i > gone) for s, i in self.rows.items()}
        self.ui.fit_table(len(self.rows))
        self.ui.remove_symbol(symbol)
        self.ui.table_rows.indices = sorted(
            self.rows[s] for s in self.ui.picker.value if s in self.rows
        )
        self._refresh_bands()
        self._place_logos()

    def _sync_stock(self, stock: Stock) -> None:
        """Show a drawn stock as it is now: its row, bands and logo updated."""
        symbol = stock.symbol
        old, self.stocks[symbol] = self.stocks[symbol], stock
        i = self.rows[symbol]
        self.ui.table_source.patch({k: [(i, v)] for k, v in table_row(stock).items()})
        if (old.week52_low, old.week52_high) != (stock.week52_low, stock.week52_high):
            self._refresh_bands()
        if old.logo_url != stock.logo_url:
            self._place_logos()

    def _patch_row(self, symbol: str, tick: Point) -> None:
        row_ = table_row(self.stocks[symbol], tick.price, tick.ts)
        i = self.rows[symbol]
        keys = ("price", "change", "change_pct", "time")
        self.ui.table_source.patch({k: [(i, row_[k])] for k in keys})

    def _refresh_bands(self) -> None:
        self.chart.bands.data = band_columns(self._ordered(), self.bases)

    def _anchor(self, symbol: str, slot: int) -> tuple[Point, float] | None:
        """The point (and its x) a line's logo sits on."""
        data = self.chart.lines[symbol].source.data
        xs = cast(Sequence[float], data["x"])
        width = self.chart.x_range.follow_interval
        i = logo_index(xs, width if isinstance(width, int | float) else WINDOWS[self.window], slot)
        if i is None:
            return None
        return Point(int(data["ts"][i]), float(data["price"][i])), float(xs[i])

    def _place_logos(self) -> None:
        anchors = {s: self._anchor(s, slot) for slot, s in enumerate(self.chart.lines)}
        starts = {s: a[0] if a else None for s, a in anchors.items()}
        xs = {s: a[1] for s, a in anchors.items() if a}
        self.chart.logos.data = logo_columns(self._ordered(), starts, self.bases, xs)

    def _move_logo(self, symbol: str) -> None:
        """Keep a logo where its line visibly starts as the window slides (a one-row patch)."""
        found = self._anchor(symbol, list(self.chart.lines).index(symbol))
        symbols = list(self.chart.logos.data["symbol"])
        if found is None or symbol not in symbols:
            if found is not None and self.stocks[symbol].logo_url:
                self._place_logos()  # its first point: the logo appears
            return
        anchor, x = found
        i = symbols.index(symbol)
        if self.chart.logos.data["ts"][i] == anchor.ts:
            return
        base = self.bases.get(symbol)
        pct = anchor.price / base - 1 if base else 0.0
        self.chart.logos.patch(
            {
                "ts": [(i, anchor.ts)],
                "x": [(i, x)],
                "price": [(i, anchor.price)],
                "pct": [(i, pct)],
            }
        )

    # -- adding and removing stocks (through the API, with the dashboard's token) -------------
    def _on_add(self) -> None:
        panel = self.watchlist
        if not panel.writable:
            return  # the controls are hidden without a token: a forged click gets nothing
        symbol = (panel.symbol.value_input or panel.symbol.value or "").strip().upper()
        if not symbol:
            panel.say("Type a symbol first, e.g. AMD.", ok=False)
            return
        panel.add.disabled = True
        panel.say(f"Adding {symbol}…")
        self._write(
            lambda token: self.runtime.client.add_stock(symbol, token, client=self.client),
            partial(self._added, symbol),
        )

    def _added(self, symbol: str, result: Written | ApiError) -> None:
        self._log_write("add", symbol, result)
        panel = self.watchlist
        panel.add.disabled = False
        if isinstance(result, Written) and result.ok:
            panel.symbol.value = panel.symbol.value_input = ""
            panel.say(f"{symbol} added: it shows below as the fetcher takes it on.")
        else:
            panel.say(f"{symbol} not added: {_refusal(result)}", ok=False)

    def _on_remove(self, symbol: str) -> None:
        if not self.watchlist.writable:
            return
        entry = self.watchlist.entries.get(symbol)
        if entry is not None and entry.remove is not None:
            entry.remove.disabled = True
        self.watchlist.say(f"Removing {symbol}…")
        self._write(
            lambda token: self.runtime.client.remove_stock(symbol, token, client=self.client),
            partial(self._removed, symbol),
        )

    def _removed(self, symbol: str, result: Written | ApiError) -> None:
        self._log_write("remove", symbol, result)
        if isinstance(result, Written) and result.ok:
            self.watchlist.say(f"{symbol} removed.")
            return  # its `stock` event takes it off the page, in every tab
        entry = self.watchlist.entries.get(symbol)
        if entry is not None and entry.remove is not None:
            entry.remove.disabled = False
        self.watchlist.say(f"{symbol} not removed: {_refusal(result)}", ok=False)

    def _write(
        self,
        call: Callable[[str], Coroutine[Any, Any, Written]],
        done: Callable[[Written | ApiError], None],
    ) -> None:
        """Make a write off the lock; `done` gets its answer under it (on the next tick)."""
        token = self.runtime.settings.write_token()
        if token is None:
            return

        async def run() -> None:
            result: Written | ApiError
            try:
                result = await call(token)
            except ApiError as exc:
                log.warning("write not sent", extra={"error": str(exc)})
                result = exc
            self.doc.add_next_tick_callback(partial(done, result))

        task = asyncio.get_running_loop().create_task(run(), name="write")
        self.writes.add(task)
        task.add_done_callback(self.writes.discard)

    def _log_write(self, action: str, symbol: str, result: Written | ApiError) -> None:
        status = result.status if isinstance(result, Written) else "unreachable"
        log.info(
            "watchlist write from the page",
            extra={"action": action, "symbol": symbol, "status": status, "client": self.client},
        )

    # -- widgets -----------------------------------------------------------------------------
    def _show_status(self, status: Status) -> None:
        self.ui.status.text = status_html(status)

    def _on_window(self, _attr: str, _old: int, new: int) -> None:
        self.window = WINDOW_NAMES[new]
        # Until the load: the old timeline's width of the new window, roughly right.
        self.chart.set_window(self.window, self._width(int(time.time() * 1000)))
        self._show_closed_toggle()
        if self.candles is not None:
            self.candles.show(self.ui.candle_symbol.value or None, self.window)
        self._show_export()
        self._reload_soon()

    def _on_mode(self, _attr: str, _old: int, new: int) -> None:
        self.chart.set_mode(MODES[new])

    def _on_view(self, _attr: str, _old: int, new: int) -> None:
        self.view = VIEWS[new]
        candles = self.view == "candles"
        self.chart.figure.visible = not candles
        if candles or self.candles is not None:
            self._candle_chart().figure.visible = candles
        self.ui.candle_symbol.visible = candles
        self.ui.mode.visible = self.ui.picker.visible = not candles
        self._show_export()
        if candles:
            self._reload_soon()

    def _on_candle_symbol(self, _attr: str, _old: str, _new: str) -> None:
        self._show_export()
        if self.view == "candles":
            self._reload_soon()

    def _on_pick(self, _attr: str, _old: list[str], new: list[str]) -> None:
        self.chart.set_visible(set(new))
        self.ui.table_rows.indices = sorted(self.rows[s] for s in new if s in self.rows)
        self._show_export()

    def _show_export(self, interval: str | None = None) -> None:
        """Point the download link at what is shown: the lines' stocks, or the candles' one at
        their width, over the window up to now."""
        if self.view == "candles":
            symbol = self.ui.candle_symbol.value
            href = export_href("bars", [symbol] if symbol else [], self.window, interval)
        else:
            href = export_href("prices", list(self.ui.picker.value), self.window)
        self.ui.export.text = export_html(href)

    # -- the market and the time axis --------------------------------------------------------
    def _collapsing(self) -> bool:
        """Whether the next load hides closed hours: asked for, a vendor's market, a day or more."""
        return (
            not is_always_open(self.market)
            and self.ui.closed.active == 0
            and WINDOWS[self.window] >= DAY_MS
        )

    def _timeline(self, sessions: Sessions | None) -> Timeline:
        market = self.market
        if sessions is None or market is None or not self._collapsing():
            return REAL
        spans = sessions.sessions
        # Open now: the last session runs on to its close (the API clips it to the window's end),
        # so live points keep their place to the right of the history.
        live = market.is_open and spans and spans[-1][1] >= sessions.end - 60_000
        until = int(market.next_close.timestamp() * 1000) if live and market.next_close else None
        return Timeline.collapsed(spans, live_until=until)

    def _width(self, end: int) -> float | None:
        """The window's width on the axis when closed hours are hidden (None: real time)."""
        if not self.timeline.collapsing:
            return None
        return self.timeline.span(end - WINDOWS[self.window], end) or None

    def _update_market(self, market: Market) -> None:
        old, self.market = self.market, market
        if old is not None and (old.calendar, old.timezone) == (market.calendar, market.timezone):
            self._show_market()
            if old.is_open != market.is_open and self.timeline.collapsing:
                self._reload_for_feed()  # the session's edge moved: the timeline with it
            return
        with self.doc.models.freeze():
            self._market_defaults()
        if WINDOWS[self.window] >= DAY_MS:
            self._reload_for_feed()

    def _market_defaults(self) -> None:
        """The time toggles as this market wants them, unless the viewer set them already."""
        market = self.market
        self.defaulting = True
        try:
            if "zone" not in self.chosen:
                self.ui.zone.active = 1 if default_zone(market) == LOCAL else 0
            if "closed" not in self.chosen:
                self.ui.closed.active = 0 if market is not None and market.collapse_closed else 1
        finally:
            self.defaulting = False
        self._show_market()

    def _show_market(self) -> None:
        """The banner, the toggles' words, and the times in the chosen zone."""
        market = self.market
        banner = banner_html(market)
        self.ui.market.text = banner
        self.ui.market.visible = bool(banner)
        exchange = "UTC" if market is None else zone_label(market.timezone)
        self.ui.zone.labels = [exchange, LOCAL_LABEL]
        self._show_closed_toggle()
        self._show_times()

    def _show_closed_toggle(self) -> None:
        self.ui.closed.visible = not is_always_open(self.market)
        self.ui.closed.disabled = WINDOWS[self.window] < DAY_MS  # an hour is shown as it is

    def _show_times(self) -> None:
        """Axes, tooltips and the table's times in the chosen zone and on the current axis."""
        market = self.market
        exchange = "UTC" if market is None else market.timezone
        self.zone = exchange if self.ui.zone.active == 0 else LOCAL
        label = self.ui.zone.labels[self.ui.zone.active or 0]
        hidden = " · closed hours hidden" if self.timeline.collapsing else ""
        self.chart.axis.show(self.timeline, self.zone)
        self.chart.figure.xaxis.axis_label = f"Times: {label}{hidden}"
        if self.candles is not None:
            self.candles.axis.show(self.candles.timeline, self.zone)
            self.candles.figure.xaxis.axis_label = f"Times: {label}{hidden}"
        column = next(c for c in self.ui.table.columns if c.field == "time")
        template = table_time_template(self.zone)
        if getattr(column.formatter, "template", None) != template:
            # a new formatter, not a changed one: the table redraws on its columns' changes only
            column.formatter = HTMLTemplateFormatter(template=template)

    def _on_zone(self, _attr: str, _old: int, _new: int) -> None:
        if not self.defaulting:
            self.chosen.add("zone")
        self._show_times()

    def _on_closed(self, _attr: str, _old: int, _new: int) -> None:
        if not self.defaulting:
            self.chosen.add("closed")
        if self.started and WINDOWS[self.window] >= DAY_MS:
            self._reload_soon()  # the sessions of the window, or none


def _refusal(result: Written | ApiError) -> str:
    """Why a write did not happen, in the API's words."""
    if isinstance(result, ApiError):
        return "the API cannot be reached, try again in a moment."
    return f"{result.detail} ({result.status})"
