"""One SSE consumer per dashboard process, fanning the API's events out to every session."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

import httpx
from httpx_sse import SSEError, aconnect_sse

from services.common.contract import HistoryPayload, Market, PricePayload, ResetPayload, Stock
from services.common.retry import Backoff
from services.dashboard.alerts import SHOWN, Firing
from services.dashboard.client import ApiClient, ApiError
from services.dashboard.metrics import DashboardMetrics
from services.dashboard.shaping import Point
from services.dashboard.watchlist import Watch, watch_of

log = logging.getLogger(__name__)

# After the market's announced open or close, ask the API this many seconds later (its clock
# and ours may differ a little); while it has not turned yet, again this often.
MARKET_LAG = 1.0
MARKET_RECHECK = 5.0
# An announced change this long past that the API never reported: look once a minute only.
MARKET_STALE = 300.0
# Firing ids remembered to tell a repeated `alert` event from a new one.
FIRINGS_REMEMBERED = 1000


class Status(StrEnum):
    """What the connection indicator shows."""

    CONNECTING = "connecting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class PriceEvent:
    symbol: str
    point: Point
    received: float = field(default_factory=time.monotonic, compare=False)  # arrival time


@dataclass(frozen=True, slots=True)
class StockEvent:
    """A stock is new or changed; `watch` is its place in the watchlist (None: plainly live)."""

    stock: Stock
    watch: Watch | None = None


@dataclass(frozen=True, slots=True)
class RemovedEvent:
    """A symbol left the watchlist: it is shown no more."""

    symbol: str


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A price alert fired (each firing once, however often the stream repeats it)."""

    firing: Firing


@dataclass(frozen=True, slots=True)
class ReloadEvent:
    """History changed or may have a gap: reload the window (all symbols when `symbols` is None)."""

    symbols: frozenset[str] | None
    start: int | None = None
    end: int | None = None


@dataclass(frozen=True, slots=True)
class StatusEvent:
    status: Status


@dataclass(frozen=True, slots=True)
class MarketEvent:
    """The market opened or closed, or its calendar changed."""

    market: Market


Event = (
    PriceEvent | StockEvent | RemovedEvent | ReloadEvent | StatusEvent | MarketEvent | AlertEvent
)
Subscriber = Callable[[Event], None]


class Feed:
    """Reads `/api/v1/stream`, resuming with Last-Event-ID, and keeps the latest stock metadata."""

    def __init__(self, client: ApiClient, metrics: DashboardMetrics, reconnect_max: float) -> None:
        self.client = client
        self.metrics = metrics
        self.reconnect_max = reconnect_max
        self.status = Status.CONNECTING
        self.last_event_id: str | None = None
        self.stocks: dict[str, Stock] = {}  # the watchlist's symbols, whatever their state
        self.watch: dict[str, Watch] = {}
        self.firings: deque[Firing] = deque(maxlen=SHOWN)  # the newest, for pages opened later
        self._fired: OrderedDict[int, None] = OrderedDict()
        self.market: Market | None = None  # None until the API says (or when it cannot)
        self.market_lag, self.market_recheck = MARKET_LAG, MARKET_RECHECK
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._clock: asyncio.Task[None] | None = None
        self._market_changed = asyncio.Event()

    # -- sessions ---------------------------------------------------------------------------
    @property
    def sessions(self) -> int:
        return len(self._subscribers)

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.add(subscriber)
        self.metrics.sessions.set(len(self._subscribers))

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        self.metrics.sessions.set(len(self._subscribers))

    def _publish(self, event: Event) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:  # one broken session must not starve the others
                log.exception("session rejected an event")

    def _set_status(self, status: Status) -> None:
        if status != self.status:
            log.info("stream status", extra={"status": str(status)})
            self.status = status
            self.metrics.feed_live.set(1 if status is Status.LIVE else 0)
            self._publish(StatusEvent(status))

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Start consuming on the running loop (once)."""
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self.run(), name="feed")
            self._clock = loop.create_task(self.watch_market(), name="market-clock")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._clock) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.aclose()

    async def run(self) -> None:
        """Connect, read, and reconnect with back-off, forever."""
        backoff = Backoff(0.25, self.reconnect_max)
        while True:
            resumed = self.last_event_id is not None
            try:
                await self._refresh_stocks()
                await self._refresh_market()
                await self._consume(resumed)
                status = Status.RECONNECTING  # the API closed the stream: it may be restarting
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.HTTPStatusError, ApiError) as e:
                status, error = Status.UNREACHABLE, repr(e)
            except (httpx.HTTPError, SSEError) as exc:
                status, error = Status.RECONNECTING, repr(exc)
            except Exception as exc:  # a surprise must not end live updates for every tab
                log.exception("stream consumer failed")
                status, error = Status.RECONNECTING, repr(exc)
            else:
                error = "stream closed by the API"
            # Say why once per change of state, not on every attempt of a long outage.
            level = logging.WARNING if status != self.status else logging.DEBUG
            log.log(level, "stream interrupted", extra={"status": str(status), "error": error})
            if self.status is Status.LIVE:
                backoff.reset()  # it was working: come back at once
            self._set_status(status)
            self.metrics.feed_reconnects.inc()
            await backoff.sleep()

    async def _refresh_stocks(self) -> None:
        listed = await self.client.stocks()
        for stock, watch in listed:
            self._apply_stock(stock, watch)
        # Removed while the stream was down: its `stock` event is gone, the listing says so.
        kept = {stock.symbol for stock, _ in listed}
        for symbol in [s for s in self.stocks if s not in kept]:
            self._remove(symbol)

    async def _refresh_market(self) -> None:
        try:
            market = await self.client.market()
        except ApiError as exc:
            # An API without the market's hours: no banner, real time on the charts.
            log.debug("market state not available", extra={"error": str(exc)})
            return
        self._apply_market(market)

    def _apply_market(self, market: Market) -> None:
        if market != self.market:
            self.market = market
            self._market_changed.set()
            self._publish(MarketEvent(market))

    def _until_change(self) -> float | None:
        """Seconds until the market is due to open or close (None: never, or not known)."""
        market = self.market
        if market is None:
            return None
        due = market.next_close if market.is_open else market.next_open
        if due is None:
            return None
        return (due - datetime.now(UTC)).total_seconds()

    async def watch_market(self) -> None:
        """At each open and close, ask the API for the market's state (events may be missed)."""
        while True:
            until = self._until_change()
            if until is None:
                timeout = None
            elif until > -MARKET_STALE:
                lag, recheck = self.market_lag, self.market_recheck
                timeout = max(until + lag, recheck if until < 0 else lag)
            else:
                timeout = 60.0
            self._market_changed.clear()
            try:
                # Not wait_for, which (before Python 3.12) swallows a cancel that comes as the
                # event is set, leaving `stop` waiting for this task until the next change.
                async with asyncio.timeout(timeout):
                    await self._market_changed.wait()
                continue  # told by an event or a reconnect: wait for the new state's change
            except TimeoutError:
                pass
            try:
                await self._refresh_market()
            except Exception:  # never let the clock stop: the next change is tried again
                log.exception("market state refresh failed")

    def _apply_stock(self, stock: Stock, watch: Watch) -> None:
        if watch.state == "removed":
            self._remove(stock.symbol)
            return
        if self.stocks.get(stock.symbol) != stock or self.watch.get(stock.symbol) != watch:
            self.stocks[stock.symbol] = stock
            self.watch[stock.symbol] = watch
            self._publish(StockEvent(stock, watch))

    def _remove(self, symbol: str) -> None:
        self.watch.pop(symbol, None)
        if self.stocks.pop(symbol, None) is not None:
            self._publish(RemovedEvent(symbol))

    def _apply_firing(self, firing: Firing) -> None:
        if firing.firing_id in self._fired:
            return  # the same firing again (a repeated delivery): shown once
        self._fired[firing.firing_id] = None
        if len(self._fired) > FIRINGS_REMEMBERED:
            self._fired.popitem(last=False)
        self.firings.append(firing)
        self._publish(AlertEvent(firing))

    async def _consume(self, resumed: bool) -> None:
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        async with aconnect_sse(
            self.client.http,
            "GET",
            "/api/v1/stream",
            headers=headers,
            timeout=self.client.stream_timeout,
        ) as source:
            source.response.raise_for_status()
            self._set_status(Status.LIVE)
            if not resumed:
                # Nothing to resume from: whatever happened while we were away is only in history.
                self._publish(ReloadEvent(None))
            async for sse in source.aiter_sse():
                self.metrics.feed_events.labels(sse.event or "message").inc()
                try:
                    self._handle(sse.event, sse.data, sse.id)
                except ValueError as exc:  # a ValidationError too: the event is dropped
                    log.warning("bad stream event", extra={"event": sse.event, "error": repr(exc)})

    def _handle(self, event: str, data: str, event_id: str | None) -> None:
        if event == "price":
            tick = PricePayload.model_validate_json(data)  # once per tick: one parse and no more
            point = Point(tick.ts, tick.price)
            stock = self.stocks.get(tick.symbol)
            if stock is not None:
                # What a tab opened later starts its table with (no view shows last_ts).
                stock.last_price = point.price
            self._publish(PriceEvent(tick.symbol, point))
            if event_id:
                self.last_event_id = event_id
        elif event == "stock":
            payload = json.loads(data)
            if not isinstance(payload, dict):
                raise ValueError("a stock event must carry an object")
            symbol = str(payload.get("symbol"))
            watch = watch_of(payload, self.watch.get(symbol))
            if watch.state == "removed":
                self._remove(symbol)  # its other fields are null: nothing else to read
            else:
                self._apply_stock(self._stock(payload), watch)
        elif event == "alert":
            self._apply_firing(Firing.model_validate_json(data))
        elif event == "history":
            history = HistoryPayload.model_validate_json(data)
            # Only history of stocks this process shows: a notification naming none of them
            # (or none at all) would only make every session reload for nothing.
            symbols = frozenset(history.symbols) & self.stocks.keys()
            if symbols:
                self._publish(ReloadEvent(frozenset(symbols), history.start, history.end))
            else:
                log.debug("history event for no tracked stock", extra={"symbols": history.symbols})
        elif event == "market":
            self._apply_market(Market.model_validate_json(data))
        elif event == "reset":
            reset = ResetPayload.model_validate_json(data)
            self.last_event_id = str(reset.last_event_id)
            self._publish(ReloadEvent(None))

    def _stock(self, payload: dict[str, object]) -> Stock:
        """The stock a `stock` event describes; fields it leaves out keep their known values."""
        known = self.stocks.get(str(payload.get("symbol")))
        return Stock.model_validate({**known.model_dump(), **payload} if known else payload)
