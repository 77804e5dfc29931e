"""A fake Alpaca: market data (snapshots, bars, logos), trading assets and the IEX trade stream.

Usage::

    fake = await FakeAlpaca(calendar="XNYS").start()
    provider = AlpacaProvider(fake.key_id, fake.secret_key, **fake.urls())
    fake.cut()        # the vendor is gone: REST answers 503, sockets are dropped and refused
    fake.restore()
    fake.withhold(start, end)  # bars of [start, end) appear only after `fake.release()`

History is synthetic and deterministic: every symbol follows a seeded walk, generated one UTC day
at a time (a day's anchors come from a daily walk, the minutes bridge one anchor to the next), so
any page of any range is reproducible and cheap. A fraction of open minutes has no trade (no bar).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import random
import struct
import time
import zlib
from collections import OrderedDict, defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

from services.common.market import Market
from tests.fakes.server import Fault, Seen, fixture
from tests.utils.loopback import LoopbackServer

KEY_ID = "PKFAKE7Q2M9X4ALPACA1"
SECRET_KEY = "alpaca-fake-secret-9d3f6b1e0c"
PRICES = {
    "AAPL": 261.74,
    "NVDA": 185.0,
    "MSFT": 490.0,
    "GE": 290.0,
    "AMZN": 230.0,
    "INTC": 24.0,
    "NFLX": 95.0,
}
NO_LOGO = {"GE"}  # the vendor has no logo for these: 404 with placeholder=false
HISTORY_START = datetime(2025, 1, 1, tzinfo=UTC)
MINUTE_SIGMA = 0.0008  # log-return per minute
DAY_SIGMA = 0.012  # log-return of the daily anchors
LIMIT_MAX = 10_000
# The fake's own protocol log would show the keys it receives; only the client's log is on trial.
FAKE_LOG = logging.getLogger("tests.fakes.alpaca.socket")
FAKE_LOG.setLevel(logging.WARNING)


def _stamp(minute: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(minute * 60))


def _nanos(ts: datetime, extra: int = 0) -> str:
    """RFC 3339 with nanoseconds, as Alpaca stamps trades."""
    return f"{ts:%Y-%m-%dT%H:%M:%S}.{ts.microsecond:06d}{extra % 1000:03d}Z"


def png(symbol: str) -> bytes:
    """A small, valid PNG: an 8x8 square in a colour of the symbol's."""
    r, g, b = (zlib.crc32(symbol.encode()) >> s & 0xFF for s in (0, 8, 16))
    rows = b"".join(b"\x00" + bytes([r, g, b]) * 8 for _ in range(8))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@dataclass
class Day:
    """One symbol's open minutes of one UTC day, and the bars of those that had trades."""

    minutes: np.ndarray  # epoch minutes, ascending
    o: np.ndarray
    h: np.ndarray
    l: np.ndarray  # noqa: E741 - Alpaca's field name
    c: np.ndarray
    v: np.ndarray
    n: np.ndarray
    has: np.ndarray  # whether the minute had a trade (a bar)
    _rows: tuple[list[Any], ...] | None = None

    def _columns(self) -> tuple[list[Any], ...]:
        if self._rows is None:  # plain lists: numpy scalars are slow to turn into JSON
            columns = (self.minutes, self.o, self.h, self.l, self.c, self.v, self.n)
            self._rows = tuple(a.tolist() for a in columns)
        return self._rows

    def bar(self, i: int) -> dict[str, Any]:
        """Bar `i` as Alpaca writes it."""
        bar: dict[str, Any] = json.loads(self.json([i]))
        return bar

    def json(self, indexes: list[int]) -> str:
        """Bars `indexes` as JSON array items (pages are built as text: the hot path)."""
        m, o, h, lo, c, v, n = self._columns()
        day = _stamp(m[0])[:11] if m else ""
        return ",".join(
            f'{{"t":"{day}{_HHMM[m[i] % 1440]}:00Z","o":{o[i]},"h":{h[i]},"l":{lo[i]},'
            f'"c":{c[i]},"v":{v[i]},"n":{n[i]},"vw":{c[i]}}}'
            for i in indexes
        )


_HHMM = [f"{m // 60:02d}:{m % 60:02d}" for m in range(1440)]


class History:
    """Deterministic minute bars of every known symbol, generated lazily one day at a time."""

    def __init__(
        self,
        prices: dict[str, float],
        start: datetime,
        calendar: str,
        gap_fraction: float,
        seed: int,
    ) -> None:
        self.prices = prices
        self.start_minute = math.ceil(start.timestamp() / 60)
        self.market = Market(calendar)
        self.gap_fraction = gap_fraction
        self.seed = seed
        self._anchors: dict[str, list[float]] = {}
        self._open: dict[int, np.ndarray] = {}
        self._days: OrderedDict[tuple[str, int], Day] = OrderedDict()

    def _code(self, symbol: str) -> int:
        return zlib.crc32(symbol.encode())

    def open_minutes(self, day: int) -> np.ndarray:
        """Epoch minutes of UTC day `day` (days since 1970) during which the market is open."""
        found = self._open.get(day)
        if found is None:
            if self.market.always_open:
                found = np.arange(day * 1440, day * 1440 + 1440, dtype=np.int64)
            else:
                self._load_sessions(day)
                found = self._open[day]
            self._open[day] = found
        return found

    def _load_sessions(self, day: int) -> None:
        """Open minutes of the 64 days around `day` (asking the calendar once, not per day)."""
        first = day // 64 * 64
        lo = datetime.fromtimestamp(first * 86400, UTC)
        per_day: dict[int, list[np.ndarray]] = defaultdict(list)
        for a, b in self.market.sessions(lo, lo + timedelta(days=64)):
            minutes = np.arange(math.ceil(a.timestamp() / 60), int(b.timestamp() // 60))
            for d in np.unique(minutes // 1440).tolist():
                per_day[d].append(minutes[minutes // 1440 == d])
        for d in range(first, first + 64):
            parts = per_day.get(d)
            self._open[d] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def anchor(self, symbol: str, day: int) -> float:
        """The log price at the start of `day` (a daily walk from the first day of history)."""
        first = self.start_minute // 1440
        walk = self._anchors.setdefault(symbol, [math.log(self.prices[symbol])])
        while len(walk) <= day - first:
            rng = np.random.default_rng([self.seed, self._code(symbol), len(walk), 7])
            walk.append(walk[-1] + float(rng.standard_normal()) * DAY_SIGMA)
        return walk[max(0, day - first)]

    def day(self, symbol: str, day: int) -> Day | None:
        """The day's minutes and bars (None before history starts or for unknown symbols)."""
        if symbol not in self.prices or day < self.start_minute // 1440:
            return None
        key = (symbol, day)
        found = self._days.get(key)
        if found is not None:
            self._days.move_to_end(key)
            return found
        minutes = self.open_minutes(day)
        count = len(minutes)
        rng = np.random.default_rng([self.seed, self._code(symbol), day, 1])
        a0, a1 = self.anchor(symbol, day), self.anchor(symbol, day + 1)
        walk = np.cumsum(rng.standard_normal(count) * MINUTE_SIGMA)
        share = np.arange(1, count + 1) / max(count, 1)
        last = walk[-1] if count else 0.0
        close = np.exp(a0 + walk - share * last + share * (a1 - a0))
        opens = np.concatenate(([math.exp(a0)], close[:-1])) if count else close
        wiggle = 1 + np.abs(rng.standard_normal(count)) * MINUTE_SIGMA / 2
        o, c = np.round(opens, 2), np.round(close, 2)
        h = np.maximum(np.round(np.maximum(opens, close) * wiggle, 2), np.maximum(o, c))
        lo = np.minimum(np.round(np.minimum(opens, close) / wiggle, 2), np.minimum(o, c))
        has = (rng.random(count) >= self.gap_fraction) & (minutes >= self.start_minute)
        found = Day(
            minutes,
            o,
            h,
            lo,
            c,
            rng.integers(100, 5000, count),
            rng.integers(1, 60, count),
            has,
        )
        self._days[key] = found
        if len(self._days) > 400:
            self._days.popitem(last=False)
        return found

    def price_at(self, symbol: str, minute: int) -> float | None:
        """The walk's close at the last open minute at or before `minute` (10 days back at most)."""
        for day in range(minute // 1440, minute // 1440 - 10, -1):
            data = self.day(symbol, day)
            if data is None:
                return None
            i = int(np.searchsorted(data.minutes, minute, side="right"))
            if i:
                return float(data.c[i - 1])
        return None

    def daily(self, symbol: str, day: int, before: int | None = None) -> dict[str, Any] | None:
        """The day's bar (`t`: its midnight in the calendar's zone), None without trades."""
        data = self.day(symbol, day)
        if data is None:
            return None
        has = data.has if before is None else data.has & (data.minutes < before)
        if not has.any():
            return None
        date = datetime.fromtimestamp(day * 86400, UTC).date()
        midnight = datetime.combine(date, dtime(0), self.market.tz).astimezone(UTC)
        idx = np.nonzero(has)[0]
        v = int(data.v[idx].sum())
        return {
            "t": midnight.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "o": float(data.o[idx[0]]),
            "h": float(data.h[idx].max()),
            "l": float(data.l[idx].min()),
            "c": float(data.c[idx[-1]]),
            "v": v,
            "n": int(data.n[idx].sum()),
            "vw": round(float((data.c[idx] * data.v[idx]).sum()) / v, 6),
        }


@dataclass
class Socket:
    """One stream connection as the server sees it."""

    conn: ServerConnection
    subscribed: list[str]
    authenticated: bool = False


Handler = Callable[[Request], Response]


class FakeAlpaca:
    """Knows the symbols in PRICES; answers others as Alpaca does (omitted, or 404).

    Scripting: `script(path, Fault...)` replaces the next REST answers (429s, HTML 5xx, delays);
    `refuse_auth.append((406, "connection limit exceeded"))` answers the next stream auth with
    that error; `await send([...])` pushes any message to the open sockets; `symbol_limit`,
    `connection_limit`, `rate_limit`/`rate_period` are the plan's limits, enforced.
    """

    def __init__(
        self,
        key_id: str = KEY_ID,
        secret_key: str = SECRET_KEY,
        *,
        prices: dict[str, float] | None = None,
        start: datetime = HISTORY_START,
        calendar: str = "24/7",
        gap_fraction: float = 0.05,
        seed: int = 17,
        trade_interval: float = 0.05,
        rate_limit: int = 200,
        rate_period: float = 60.0,
        symbol_limit: int = 30,
        connection_limit: int = 1,
        auth_timeout: float = 10.0,
    ) -> None:
        self.key_id = key_id
        self.secret_key = secret_key
        self.prices = dict(prices or PRICES)
        self.history = History(self.prices, start, calendar, gap_fraction, seed)
        self.trade_interval = trade_interval
        self.rate_limit = rate_limit
        self.rate_period = rate_period
        self.symbol_limit = symbol_limit
        self.connection_limit = connection_limit
        self.auth_timeout = auth_timeout
        # REST
        self.requests: list[Seen] = []
        self.faults: dict[str, deque[Fault]] = defaultdict(deque)
        self.throttled = 0  # 429s the budget gave
        self._window = (0, 0)  # (window index, requests in it)
        self.down = False
        self._withheld: list[tuple[int, int, frozenset[str] | None]] = []
        routes: dict[str, Handler] = {
            "/v2/stocks/snapshots": self._snapshots,
            "/v2/stocks/bars": self._bars,
            "/v1beta1/logos/{symbol}": self._logo,
            "/v2/assets/{symbol}": self._asset,
        }
        self.app = Starlette(
            routes=[Route(p, self._wrap(h), methods=["GET"]) for p, h in routes.items()]
        )
        self._server = LoopbackServer(self.app, "fake alpaca")
        self.url = ""
        # live trades
        self._rng = random.Random(seed)
        self._trade_id = 0
        self.last_trades: dict[str, dict[str, Any]] = {}
        self._open_at = (-1, False)  # (minute, whether the market is open in it)
        # stream
        self._ws: Server | None = None
        self.stream_url = ""
        self.ws_paths: list[str] = []
        self.ws_connects = 0
        self.auths = 0
        self.subscriptions: list[list[str]] = []  # accepted trades, one list per connection
        self.subscribe_requests: list[list[str]] = []
        self.sockets: dict[ServerConnection, Socket] = {}
        self.trades_sent = 0
        self.refuse_auth: deque[tuple[int, str]] = deque()  # errors answering the next auths

    # -- switches -------------------------------------------------------------------------------

    def urls(self) -> dict[str, Any]:
        """The provider's URL arguments for this fake."""
        return {"data_url": self.url, "trading_url": self.url, "stream_url": self.stream_url}

    def script(self, path: str, *faults: Fault) -> None:
        """Answer the next requests to `path` (the full path) with `faults`."""
        self.faults[path].extend(faults)

    def calls(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    def cut(self) -> None:
        """The vendor is unreachable: REST answers 503, sockets are dropped and refused."""
        self.down = True
        self.drop_connections()

    def restore(self) -> None:
        self.down = False

    def withhold(self, start: datetime, end: datetime, symbols: set[str] | None = None) -> None:
        """Serve no bars of [start, end) (for `symbols`, or all) until `release()`."""
        self._withheld.append(
            (
                math.ceil(start.timestamp() / 60),
                math.ceil(end.timestamp() / 60),
                frozenset(symbols) if symbols else None,
            )
        )

    def release(self) -> None:
        self._withheld.clear()

    def drop_connections(self) -> None:
        """Close every socket abruptly, as a vendor restart or a network cut would."""
        for socket in list(self.sockets.values()):
            socket.conn.transport.abort()
        self.sockets.clear()

    async def send(self, message: Any) -> None:
        """Send `message` (JSON-encoded unless str/bytes) to every authenticated socket."""
        raw = message if isinstance(message, str | bytes) else json.dumps(message)
        for socket in list(self.sockets.values()):
            if socket.authenticated:
                with contextlib.suppress(Exception):
                    await socket.conn.send(raw)

    # -- ground truth for tests -----------------------------------------------------------------

    def minute_bars(self, symbol: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """The 1-minute bars the vendor has for `symbol` starting in [start, end)."""
        lo, hi = math.ceil(start.timestamp() / 60), math.ceil(end.timestamp() / 60) - 1
        out: list[dict[str, Any]] = []
        for _, data, idx in self._walk([symbol], lo, hi, None):
            if len(idx):
                out.extend(json.loads(f"[{data.json(idx.tolist())}]"))
        return out

    def daily_bars(self, symbol: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """The 1-day bars of the UTC days starting in [start, end] (today's so far)."""
        first, last = math.ceil(start.timestamp() / 86400), int(end.timestamp() // 86400)
        now = int(time.time() // 60)
        bars = (self.history.daily(symbol, day, now) for day in range(first, last + 1))
        return [b for b in bars if b is not None]

    # -- REST -----------------------------------------------------------------------------------

    def _budget(self) -> tuple[bool, dict[str, str]]:
        now = time.time()
        window = int(now // self.rate_period)
        index, used = self._window
        used = used + 1 if index == window else 1
        self._window = (window, used)
        reset = math.ceil((window + 1) * self.rate_period)
        headers = {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(max(0, self.rate_limit - used)),
            "X-RateLimit-Reset": str(reset),
        }
        return used <= self.rate_limit, headers

    def _authorised(self, request: Request) -> bool:
        return (
            request.headers.get("apca-api-key-id") == self.key_id
            and request.headers.get("apca-api-secret-key") == self.secret_key
        )

    def _wrap(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            path = request.url.path
            self.requests.append(
                Seen(path, dict(request.query_params), dict(request.headers), time.monotonic())
            )
            if self.down:
                return Response(fixture("error_page.html"), 503, media_type="text/html")
            if self.faults[path]:
                fault = self.faults[path].popleft()
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                return Response(
                    fault.body, fault.status, fault.headers, media_type=fault.content_type
                )
            allowed, headers = self._budget()
            if not allowed:
                self.throttled += 1
                response: Response = JSONResponse({"message": "too many requests."}, 429)
            elif not self._authorised(request):
                body: dict[str, Any] = {"message": "forbidden."}
                if path.startswith("/v2/assets"):
                    body = {"code": 40110000, "message": "request is not authorized"}
                response = JSONResponse(body, 401)
            else:
                response = handler(request)
            response.headers.update(headers)
            return response

        return endpoint

    def _symbols(self, request: Request) -> list[str] | None:
        raw = request.query_params.get("symbols", "")
        symbols = [s.strip().upper() for s in raw.split(",") if s.strip()]
        return symbols or None

    def _bad(self, message: str) -> Response:
        return JSONResponse({"message": message}, 400)

    def is_open(self, now: datetime) -> bool:
        """Whether the calendar trades at `now` (asked once a minute: sessions change on one)."""
        minute = int(now.timestamp() // 60)
        if self._open_at[0] != minute:
            self._open_at = (minute, self.history.market.is_open(now))
        return self._open_at[1]

    def trade(self, symbol: str, now: datetime | None = None) -> dict[str, Any] | None:
        """The latest trade of `symbol`; a new one while the market is open and time has passed."""
        now = now or datetime.now(UTC)
        last = self.last_trades.get(symbol)
        fresh = last is None or time.monotonic() - last["_at"] >= self.trade_interval
        if fresh and self.is_open(now):
            price = self.history.price_at(symbol, int(now.timestamp() // 60))
            if price is None:
                return last
            self._trade_id += 1
            price *= 1 + self._rng.uniform(-0.0005, 0.0005)
            last = {
                "t": _nanos(now, self._rng.randrange(1000)),
                "x": "V",
                "p": round(price, 2),
                "s": self._rng.randint(1, 300),
                "c": ["@"],
                "i": self._trade_id,
                "z": "C",
                "_at": time.monotonic(),
            }
        elif last is None:
            # Closed: the last trade is the close of the last open minute.
            minute = int(now.timestamp() // 60)
            price = self.history.price_at(symbol, minute)
            if price is None:
                return None
            last = {
                "t": _nanos(now.replace(second=0, microsecond=0) - timedelta(seconds=1)),
                "x": "V",
                "p": price,
                "s": 100,
                "c": ["@"],
                "i": 0,
                "z": "C",
                "_at": time.monotonic(),
            }
        self.last_trades[symbol] = last
        return last

    def _snapshot(self, symbol: str) -> dict[str, Any] | None:
        trade = self.trade(symbol)
        if trade is None:
            return None
        now = datetime.now(UTC)
        today = int(now.timestamp() // 86400)
        minute = int(now.timestamp() // 60)
        data = self.history.day(symbol, today)
        daily = self.history.daily(symbol, today, minute)
        previous = None
        for day in range(today - 1, today - 10, -1):
            previous = self.history.daily(symbol, day)
            if previous is not None:
                break
        minute_bar = None
        if data is not None and (done := data.has & (data.minutes < minute)).any():
            minute_bar = data.bar(int(np.nonzero(done)[0][-1]))
        p = trade["p"]
        return {
            "latestTrade": {k: v for k, v in trade.items() if not k.startswith("_")},
            "latestQuote": {
                "t": trade["t"],
                "ax": "V",
                "ap": round(p * 1.0002, 2),
                "as": 2,
                "bx": "V",
                "bp": round(p * 0.9998, 2),
                "bs": 3,
                "c": ["R"],
                "z": "C",
            },
            "minuteBar": minute_bar,
            "dailyBar": daily,
            "prevDailyBar": previous,
        }

    def _snapshots(self, request: Request) -> Response:
        symbols = self._symbols(request)
        if symbols is None:
            return self._bad("missing symbols")
        answer = {}
        for symbol in symbols:
            if symbol in self.prices and (snapshot := self._snapshot(symbol)) is not None:
                answer[symbol] = snapshot
        return JSONResponse(answer)

    def _walk(
        self, symbols: list[str], lo: int, hi: int, token: tuple[str, int] | None
    ) -> Iterator[tuple[str, Day, np.ndarray]]:
        """(symbol, day, indexes of its bars) in [lo, hi] minutes, by symbol then time."""
        for symbol in symbols:
            first = lo
            if token is not None:
                if symbol < token[0]:
                    continue
                if symbol == token[0]:
                    first = max(lo, token[1])
            for day in range(first // 1440, hi // 1440 + 1):
                data = self.history.day(symbol, day)
                if data is None:
                    continue
                a = int(np.searchsorted(data.minutes, first))
                b = int(np.searchsorted(data.minutes, hi, side="right"))
                if a >= b:
                    continue
                has = data.has[a:b].copy()
                for w_lo, w_hi, only in self._withheld:
                    if only is None or symbol in only:
                        has &= ~((data.minutes[a:b] >= w_lo) & (data.minutes[a:b] < w_hi))
                yield symbol, data, a + np.nonzero(has)[0]

    def _bars(self, request: Request) -> Response:
        q = request.query_params
        symbols = self._symbols(request)
        if symbols is None:
            return self._bad("missing symbols")
        timeframe = q.get("timeframe", "")
        if timeframe not in ("1Min", "1T", "1Day", "1D"):
            return self._bad(f"invalid timeframe: {timeframe!r} (the fake serves 1Min and 1Day)")
        try:
            limit = int(q.get("limit", "1000"))
            start = datetime.fromisoformat(q["start"])
            end = datetime.fromisoformat(q["end"]) if "end" in q else datetime.now(UTC)
        except (KeyError, ValueError):
            return self._bad("invalid start, end or limit")
        if not 1 <= limit <= LIMIT_MAX or start.tzinfo is None or end.tzinfo is None:
            return self._bad("invalid start, end or limit")
        if q.get("sort", "asc") != "asc":
            return self._bad("the fake sorts ascending only")
        token = None
        if "page_token" in q:
            try:
                name, at = base64.b64decode(q["page_token"]).decode().split("|")
                token = (name, int(at))
            except ValueError:
                return self._bad("invalid page_token")
        # Only whole minutes that have ended are served: no bar for the minute in progress.
        lo = math.ceil(start.timestamp() / 60)
        hi = min(int(end.timestamp() // 60), int(time.time() // 60) - 1)
        wanted = sorted({s for s in symbols if s in self.prices})
        daily = timeframe in ("1Day", "1D")
        bars: dict[str, list[str]] = {}  # JSON text of each symbol's bars
        left, next_token = limit, None
        if daily:
            for symbol in wanted:
                for day in range(lo // 1440, hi // 1440 + 1):
                    if token is not None and (symbol, day * 1440) < token:
                        continue
                    bar = self.history.daily(symbol, day, hi + 1)
                    if bar is None or not lo <= day * 1440 <= hi:
                        continue
                    if not left:
                        next_token = (symbol, day * 1440)
                        break
                    bars.setdefault(symbol, []).append(json.dumps(bar))
                    left -= 1
                if next_token:
                    break
        else:
            for symbol, data, idx in self._walk(wanted, lo, hi, token):
                if not len(idx):
                    continue
                if not left:
                    next_token = (symbol, int(data.minutes[idx[0]]))
                    break
                take = idx[:left]
                bars.setdefault(symbol, []).append(data.json(take.tolist()))
                left -= len(take)
                if len(idx) > len(take):
                    next_token = (symbol, int(data.minutes[idx[len(take)]]))
                    break
        encoded = "null"
        if next_token is not None:
            token_text = base64.b64encode(f"{next_token[0]}|{next_token[1]}".encode()).decode()
            encoded = json.dumps(token_text)
        body = ",".join(f'"{symbol}":[{",".join(parts)}]' for symbol, parts in bars.items())
        return Response(
            f'{{"bars":{{{body}}},"next_page_token":{encoded}}}', media_type="application/json"
        )

    def _logo(self, request: Request) -> Response:
        symbol = request.path_params["symbol"]
        placeholder = request.query_params.get("placeholder", "true").lower() != "false"
        if symbol in self.prices and symbol not in NO_LOGO:
            return Response(png(symbol), media_type="image/png")
        if placeholder:
            return Response(png(symbol[:1]), media_type="image/png")
        return JSONResponse({"message": "logo not found"}, 404)

    def _asset(self, request: Request) -> Response:
        symbol = request.path_params["symbol"]
        if symbol not in self.prices:
            return JSONResponse({"code": 40410000, "message": f"asset not found for {symbol}"}, 404)
        asset = {
            "id": f"00000000-0000-4000-8000-{zlib.crc32(symbol.encode()):012d}",
            "class": "us_equity",
            "exchange": "NASDAQ",
            "symbol": symbol,
            "name": f"{symbol} Inc. Common Stock",
            "status": "active",
            "tradable": True,
            "marginable": True,
            "shortable": True,
            "easy_to_borrow": True,
            "fractionable": True,
            "attributes": [],
        }
        return JSONResponse(asset)

    # -- stream ---------------------------------------------------------------------------------

    def _handshake(self, conn: ServerConnection, request: WsRequest) -> WsResponse | None:
        self.ws_paths.append(request.path)
        if self.down:
            return conn.respond(503, "down\n")
        return None

    async def _reply(self, socket: Socket, *items: dict[str, Any]) -> None:
        await socket.conn.send(json.dumps(list(items), separators=(",", ":")))

    async def _error(self, socket: Socket, code: int, message: str, close: bool = False) -> None:
        await self._reply(socket, {"T": "error", "code": code, "msg": message})
        if close:
            await socket.conn.close()

    async def _socket(self, conn: ServerConnection) -> None:
        self.ws_connects += 1
        socket = Socket(conn, [])
        self.sockets[conn] = socket
        sender: asyncio.Task[None] | None = None
        try:
            await self._reply(socket, {"T": "success", "msg": "connected"})
            while True:
                timeout = None if socket.authenticated else self.auth_timeout
                try:
                    raw = await asyncio.wait_for(conn.recv(), timeout)
                except TimeoutError:
                    await self._error(socket, 404, "auth timeout", close=True)
                    return
                try:
                    message = json.loads(raw)
                    action = message.get("action")
                except (ValueError, AttributeError):
                    await self._error(socket, 400, "invalid syntax")
                    continue
                if action == "auth":
                    if socket.authenticated:
                        await self._error(socket, 403, "already authenticated")
                    elif self.refuse_auth:
                        await self._error(socket, *self.refuse_auth.popleft(), close=True)
                        return
                    elif (message.get("key"), message.get("secret")) != (
                        self.key_id,
                        self.secret_key,
                    ):
                        await self._error(socket, 402, "auth failed", close=True)
                        return
                    elif sum(s.authenticated for s in self.sockets.values()) >= (
                        self.connection_limit
                    ):
                        await self._error(socket, 406, "connection limit exceeded", close=True)
                        return
                    else:
                        socket.authenticated = True
                        self.auths += 1
                        self.subscriptions.append(socket.subscribed)
                        await self._reply(socket, {"T": "success", "msg": "authenticated"})
                        sender = asyncio.create_task(self._send_trades(socket))
                elif action in ("subscribe", "unsubscribe"):
                    if not socket.authenticated:
                        await self._error(socket, 401, "not authenticated")
                        continue
                    trades = [s for s in message.get("trades", []) if isinstance(s, str)]
                    if action == "subscribe":
                        self.subscribe_requests.append(trades)
                        merged = list(dict.fromkeys(socket.subscribed + trades))
                        if len(merged) > self.symbol_limit:
                            await self._error(socket, 405, "symbol limit exceeded")
                            continue
                    else:
                        merged = [s for s in socket.subscribed if s not in trades]
                    socket.subscribed[:] = merged
                    await self._reply(socket, self._ack(socket))
                else:
                    await self._error(socket, 400, "invalid syntax")
        except Exception:  # noqa: BLE001, S110 - a dropped client is part of the test
            pass
        finally:
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
            self.sockets.pop(conn, None)

    @staticmethod
    def _ack(socket: Socket) -> dict[str, Any]:
        channels = ["quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds"]
        return {
            "T": "subscription",
            "trades": list(socket.subscribed),
            **{name: [] for name in channels},
            "corrections": list(socket.subscribed),
            "cancelErrors": list(socket.subscribed),
        }

    async def _send_trades(self, socket: Socket) -> None:
        while True:
            await asyncio.sleep(self.trade_interval)
            now = datetime.now(UTC)
            items = []
            for symbol in socket.subscribed:
                if symbol not in self.prices or not self.is_open(now):
                    continue
                self.last_trades.pop(symbol, None)  # a new trade every interval
                trade = self.trade(symbol, now)
                if trade is not None:
                    public = {k: v for k, v in trade.items() if not k.startswith("_")}
                    items.append({"T": "t", "S": symbol, **public})
            if items:
                await socket.conn.send(json.dumps(items, separators=(",", ":")))
                self.trades_sent += len(items)

    # -- life -----------------------------------------------------------------------------------

    async def start(self) -> FakeAlpaca:
        self.url = await self._server.start()
        self._ws = await serve(
            self._socket, "127.0.0.1", 0, process_request=self._handshake, logger=FAKE_LOG
        )
        ws_port = next(iter(self._ws.sockets)).getsockname()[1]
        self.stream_url = f"ws://127.0.0.1:{ws_port}/v2/iex"
        return self

    async def stop(self) -> None:
        if self._ws is not None:
            self._ws.close()
            await self._ws.wait_closed()
        await self._server.stop()


def settings_env(fake: FakeAlpaca, **extra: Any) -> dict[str, str]:
    """Environment that points the fetcher at the fake."""
    return {
        "STOCKSTREAMER_PROVIDER": "alpaca",
        "ALPACA_API_KEY_ID": fake.key_id,
        "ALPACA_API_SECRET_KEY": fake.secret_key,
        "STOCKSTREAMER_ALPACA_DATA_URL": fake.url,
        "STOCKSTREAMER_ALPACA_STREAM_URL": fake.stream_url,
        "STOCKSTREAMER_ALPACA_TRADING_URL": fake.url,
        **{k: str(v) for k, v in extra.items()},
    }
