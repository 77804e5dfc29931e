"""Alpaca (alpaca.markets), IEX feed: snapshots, 1-minute bars, names, logos and a trade stream."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
from aiolimiter import AsyncLimiter

from services.common.models import Bar, Profile, Tick, Week52
from services.fetcher.providers.alpaca_stream import (
    KEY_SETTINGS,
    AlpacaStream,
    count,
    parse_time,
    positive,
)
from services.fetcher.providers.badges import logo_data_uri
from services.fetcher.providers.base import (
    Provider,
    ProviderError,
    ProviderFatal,
    SymbolLimit,
    TradeStream,
)
from services.fetcher.providers.http import (
    MAX_RETRY_AFTER,
    BadPayload,
    gather_per_symbol,
    retry_after_seconds,
)

log = logging.getLogger(__name__)

FEED = "iex"  # the free plan's feed: trades on the IEX exchange only
PAGE_LIMIT = 10_000  # the most bars one page may hold (across all its symbols)
SYMBOLS_PER_REQUEST = 100  # keeps the URL short; pages carry on across symbols anyway
# A logo becomes a base64 data: URI (4/3 of its size), which validation caps at 64 KiB.
MAX_LOGO_BYTES = 48 * 1024
LOGO_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
YEAR = timedelta(days=365)
_UNSEEN: Any = object()  # a time string not parsed yet


def rfc3339(ts: datetime) -> str:
    """`ts` as Alpaca's query parameters take it: RFC 3339 in UTC, with a Z."""
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


class AlpacaClient:
    """GETs from Alpaca's data and trading APIs: keys in headers only, a rate limiter, and a
    pause whenever X-RateLimit-Remaining reaches 0 (until X-RateLimit-Reset)."""

    def __init__(
        self,
        key_id: str,
        secret_key: str,
        rate_limit: int,
        rate_period: float,
        concurrency: int,
        timeout: float,
    ) -> None:
        self._client = httpx.AsyncClient(
            headers={"APCA-API-KEY-ID": key_id, "APCA-API-SECRET-KEY": secret_key},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._limiter = AsyncLimiter(rate_limit, rate_period)
        self._slots = asyncio.Semaphore(concurrency)
        self._paused_until = 0.0  # monotonic time before which nothing is sent

    def __repr__(self) -> str:
        return "AlpacaClient()"

    def pause(self, seconds: float) -> None:
        """Send nothing for `seconds`."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def get(
        self, url: str, params: Mapping[str, str], missing_ok: bool = False
    ) -> httpx.Response | None:
        """A 2xx response (None for a 404 when `missing_ok`); ProviderError for the rest."""
        return self.check(f"alpaca {httpx.URL(url).path}", await self.send(url, params), missing_ok)

    async def send(self, url: str, params: Mapping[str, str]) -> httpx.Response:
        """Any response, within the rate limits; ProviderError when none came."""
        async with self._slots:
            while (wait := self._paused_until - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            await self._limiter.acquire()
            what = f"alpaca {httpx.URL(url).path}"
            try:
                response = await self._client.get(url, params=params)
            except httpx.TimeoutException:
                raise ProviderError("timeout", f"{what}: timed out") from None
            except httpx.HTTPError as exc:
                raise ProviderError("connection", f"{what}: {type(exc).__name__}") from None
            self._note_budget(response)
        return response

    def _note_budget(self, response: httpx.Response) -> None:
        remaining = response.headers.get("X-RateLimit-Remaining", "").strip()
        if remaining.isdigit() and int(remaining) == 0:
            wait = self._until_reset(response)
            if wait:
                self.pause(wait)

    @staticmethod
    def _until_reset(response: httpx.Response) -> float | None:
        reset = response.headers.get("X-RateLimit-Reset", "").strip()
        if not reset.isdigit():
            return None
        return min(max(int(reset) - time.time(), 0.0), MAX_RETRY_AFTER)

    def check(self, what: str, response: httpx.Response, missing_ok: bool) -> httpx.Response | None:
        """`response` when it is a 2xx (None for a 404 when `missing_ok`); else ProviderError."""
        status = response.status_code
        if status == 429:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            if wait is None:
                wait = self._until_reset(response)
            if wait:
                self.pause(wait)
            raise ProviderError("rate_limited", f"{what}: HTTP 429", retry_after=wait)
        if status >= 500:
            raise ProviderError("http_5xx", f"{what}: HTTP {status}")
        if status in (401, 403):
            raise ProviderFatal(
                "auth", f"alpaca refused the API keys ({what}: HTTP {status}); check {KEY_SETTINGS}"
            )
        if status == 404 and missing_ok:
            return None
        if status >= 400:
            raise ProviderError("http_4xx", f"{what}: HTTP {status}: {_message(response)}")
        return response

    async def get_json(self, url: str, params: Mapping[str, str], missing_ok: bool = False) -> Any:
        """The decoded JSON body (numbers with a fraction as Decimal); BadPayload for junk."""
        response = await self.get(url, params, missing_ok)
        if response is None:
            return None
        body = response.content.strip()
        path = response.url.path
        if not body:
            raise BadPayload("empty_body", f"{path}: empty body")
        if "html" in response.headers.get("content-type", "") or body[:1] == b"<":
            raise BadPayload("html_body", f"{path}: HTML instead of JSON")
        try:
            return json.loads(body, parse_float=Decimal)
        except ValueError:
            raise BadPayload("malformed_json", f"{path}: body is not JSON") from None

    async def aclose(self) -> None:
        await self._client.aclose()


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return "(no message)"
    message = data.get("message") if isinstance(data, dict) else None
    return str(message)[:200] if message else "(no message)"


def _chunks(symbols: Sequence[str]) -> list[list[str]]:
    unique = list(dict.fromkeys(symbols))
    return [unique[i : i + SYMBOLS_PER_REQUEST] for i in range(0, len(unique), SYMBOLS_PER_REQUEST)]


class AlpacaProvider(Provider):
    """The free plan: IEX trades, 200 REST calls a minute, one socket of 30 symbols."""

    name = "alpaca"
    has_history = True

    def __init__(
        self,
        key_id: str,
        secret_key: str,
        *,
        data_url: str = "https://data.alpaca.markets",
        stream_url: str = "wss://stream.data.alpaca.markets/v2/iex",
        trading_url: str = "https://paper-api.alpaca.markets",
        stream: bool = True,
        rate_limit: int = 200,
        rate_period: float = 60.0,
        concurrency: int = 4,
        timeout: float = 10.0,
        reconnect_max: float = 30.0,
        stream_symbol_limit: int = 30,
    ) -> None:
        self._key_id = key_id
        self._secret_key = secret_key
        self._data_url = data_url.rstrip("/")
        self._trading_url = trading_url.rstrip("/")
        self._stream_url = stream_url
        self._stream_enabled = stream
        self._reconnect_max = reconnect_max
        self._stream_symbol_limit = stream_symbol_limit
        self.http = AlpacaClient(key_id, secret_key, rate_limit, rate_period, concurrency, timeout)
        self._last_trade: dict[str, datetime] = {}
        self._previous_close: dict[str, Decimal] = {}
        self._unknown: set[str] = set()

    def __repr__(self) -> str:
        return f"AlpacaProvider(data_url={self._data_url!r})"

    # -- quotes -----------------------------------------------------------------------------

    async def _snapshots(self, symbols: Sequence[str]) -> dict[str, Tick]:
        """The latest trade of each symbol the vendor knows; remembers previous closes."""
        latest: dict[str, Tick] = {}
        for chunk in _chunks(symbols):
            params = {"symbols": ",".join(chunk), "feed": FEED}
            try:
                data = await self.http.get_json(f"{self._data_url}/v2/stocks/snapshots", params)
                if not isinstance(data, dict):
                    raise BadPayload("invalid_fields", "snapshots: expected an object")
            except BadPayload as exc:
                self.dropped(exc.kind, str(exc))
                continue
            for symbol in chunk:
                snapshot = data.get(symbol)
                if snapshot is None:
                    continue  # no data for it on this feed (or an unknown symbol)
                tick = self._snapshot(symbol, snapshot)
                if tick is not None:
                    latest[symbol] = tick
        return latest

    def _snapshot(self, symbol: str, snapshot: object) -> Tick | None:
        trade = snapshot.get("latestTrade") if isinstance(snapshot, dict) else None
        if not isinstance(snapshot, dict) or not isinstance(trade, dict):
            self.dropped("invalid_fields", f"snapshot {symbol}: no latestTrade")
            return None
        previous = snapshot.get("prevDailyBar")
        close = positive(previous.get("c")) if isinstance(previous, dict) else None
        if close is not None:
            self._previous_close[symbol] = close
        price, ts, size = positive(trade.get("p")), parse_time(trade.get("t")), trade.get("s")
        if price is None or ts is None or (size is not None and count(size) is None):
            self.dropped("invalid_fields", f"snapshot {symbol}: unusable latestTrade")
            return None
        return Tick(symbol, ts, price, size)

    async def quotes(self, symbols: Sequence[str]) -> list[Tick]:
        ticks = []
        for symbol, tick in (await self._snapshots(symbols)).items():
            if self._last_trade.get(symbol) == tick.ts:
                continue  # no trade since the last round (or the market is closed)
            self._last_trade[symbol] = tick.ts
            ticks.append(tick)
        return ticks

    # -- bars ---------------------------------------------------------------------------------

    async def bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> list[Bar]:
        return await self._bars(symbols, "1Min", start, end)

    async def _bars(
        self, symbols: Sequence[str], timeframe: str, start: datetime, end: datetime
    ) -> list[Bar]:
        if end <= start or not symbols:
            return []
        chunks = _chunks(symbols)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._pages(c, timeframe, start, end)) for c in chunks]
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None  # the first failure; the others were cancelled
        return [bar for task in tasks for bar in task.result()]

    async def _pages(
        self, symbols: list[str], timeframe: str, start: datetime, end: datetime
    ) -> list[Bar]:
        """Every page of one request, following next_page_token (symbol by symbol, oldest first)."""
        params = {
            "symbols": ",".join(symbols),
            "timeframe": timeframe,
            "start": rfc3339(start),
            "end": rfc3339(end),  # inclusive at Alpaca: a bar starting at `end` is left out below
            "feed": FEED,
            "limit": str(PAGE_LIMIT),
            "adjustment": "raw",
            "sort": "asc",
        }
        bars: list[Bar] = []
        times: dict[str, datetime | None] = {}  # a page's symbols share their minutes
        while True:
            try:
                page = await self.http.get_json(f"{self._data_url}/v2/stocks/bars", params)
            except BadPayload as exc:
                # A page lost is a hole in the window: the whole call fails and is retried.
                raise ProviderError(exc.kind, f"alpaca bars: {exc}") from None
            found = page.get("bars") if isinstance(page, dict) else []
            if not isinstance(page, dict) or not isinstance(found, dict | None):
                # (no bars at all may come as null)
                raise ProviderError("invalid_fields", "alpaca bars: the page is not an object")
            token = page.get("next_page_token")
            if token is not None and (
                not isinstance(token, str) or token == params.get("page_token")
            ):
                raise ProviderError("invalid_fields", "alpaca bars: unusable next_page_token")
            for symbol, items in (found or {}).items():
                if not isinstance(items, list):
                    self.dropped("invalid_fields", f"bars {symbol}: not a list")
                    continue
                bars.extend(self._parse_bars(symbol, items, start, end, times))
            if not token:
                return bars
            params["page_token"] = token

    def _parse_bars(
        self,
        symbol: str,
        items: list[Any],
        start: datetime,
        end: datetime,
        times: dict[str, datetime | None],
    ) -> list[Bar]:
        # The hot loop of a backfill (a year of minutes is ~600k bars): plain checks, no models.
        # Prices decode as Decimal (parse_float), which is never NaN nor infinite; so one chain
        # of comparisons checks them all positive and the bar's shape sane.
        out: list[Bar] = []
        append = out.append
        for item in items:
            try:
                t, o, h, lo, c = item["t"], item["o"], item["h"], item["l"], item["c"]
                v, n = item.get("v"), item.get("n")
            except (KeyError, TypeError, AttributeError, IndexError):
                self.dropped("invalid_fields", f"bars {symbol}: an item lacks t/o/h/l/c")
                continue
            if not (
                type(o) is Decimal
                and type(h) is Decimal
                and type(lo) is Decimal
                and type(c) is Decimal
            ):
                # Whole-number prices arrive as int: the slow path converts them.
                o, h, lo, c = positive(o), positive(h), positive(lo), positive(c)
                if o is None or h is None or lo is None or c is None:
                    self.dropped("invalid_fields", f"bars {symbol}: unusable price at {t!r}")
                    continue
            ts = times.get(t, _UNSEEN) if type(t) is str else None
            if ts is _UNSEEN:
                ts = parse_time(t)
                if ts is not None and (ts.second or ts.microsecond):
                    ts = None  # a bar starts on a whole minute
                times[t] = ts
            if (
                ts is None
                or not 0 < lo <= o <= h
                or not lo <= c <= h
                or (v is not None and (type(v) is not int or v < 0))
                or (n is not None and (type(n) is not int or n < 0))
            ):
                self.dropped("invalid_fields", f"bars {symbol}: unusable bar at {t!r}")
                continue
            if start <= ts < end:
                append(Bar(symbol, ts, o, h, lo, c, v, n))
        return out

    # -- profiles and 52-week ranges ----------------------------------------------------------

    def _unknown_symbol(self, symbol: str) -> None:
        if symbol not in self._unknown:
            self._unknown.add(symbol)
            log.warning("alpaca does not know this symbol; dropping it", extra={"symbol": symbol})
        self.dropped("unknown_symbol", symbol)

    async def _logo(self, symbol: str) -> str | None:
        """The vendor's logo as a data: URI, or None when it has none that the page may show."""
        url = f"{self._data_url}/v1beta1/logos/{quote(symbol, safe='')}"
        try:
            response = await self.http.get(url, {"placeholder": "false"}, missing_ok=True)
        except ProviderFatal:
            return None  # logos are not on every plan; the name and prices still are
        if response is None:
            return None
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        body = response.content
        if kind not in LOGO_TYPES or not body or len(body) > MAX_LOGO_BYTES:
            self.dropped("unusable_logo", f"logo {symbol}: {kind or 'no type'}, {len(body)} bytes")
            return None
        return f"data:{kind};base64,{base64.b64encode(body).decode()}"

    async def _profile(self, symbol: str) -> Profile | None:
        url = f"{self._trading_url}/v2/assets/{quote(symbol, safe='')}"
        asset = await self.http.get_json(url, {}, missing_ok=True)
        if asset is None:
            self._unknown_symbol(symbol)
            return None
        if not isinstance(asset, dict):
            raise BadPayload("invalid_fields", f"asset {symbol}: expected an object")
        name = asset.get("name")
        logo = await self._logo(symbol)
        return Profile(
            symbol, name if isinstance(name, str) else None, logo or logo_data_uri(symbol)
        )

    async def profiles(self, symbols: Sequence[str]) -> list[Profile]:
        return await gather_per_symbol(symbols, self._profile, self.dropped)

    async def check_symbol(self, symbol: str) -> str | None:
        """Alpaca's assets answer an unknown symbol with 404 and a message; an inactive asset
        has no prices either."""
        url = f"{self._trading_url}/v2/assets/{quote(symbol, safe='')}"
        response = await self.http.send(url, {})
        if response.status_code == 404:
            return f"Alpaca: {_message(response)}"
        checked = self.http.check(f"alpaca {response.url.path}", response, missing_ok=False)
        asset = checked.json() if checked is not None else None
        if isinstance(asset, dict) and asset.get("status") == "inactive":
            return f"Alpaca: {symbol} is inactive"
        return None

    def symbol_limit(self) -> SymbolLimit | None:
        if not self._stream_enabled:
            return None  # polled over REST: the rate limit spreads, nothing refuses a symbol
        n = self._stream_symbol_limit
        return SymbolLimit(
            n,
            f"Alpaca's IEX feed streams at most {n} symbols "
            "(STOCKSTREAMER_ALPACA_STREAM_SYMBOL_LIMIT)",
        )

    async def week52(self, symbols: Sequence[str]) -> list[Week52]:
        now = datetime.now(UTC)
        daily = await self._bars(symbols, "1Day", now - YEAR, now)
        await self._snapshots(symbols)  # for the previous close (prevDailyBar)
        by_symbol: dict[str, list[Bar]] = {}
        for bar in daily:
            by_symbol.setdefault(bar.symbol, []).append(bar)
        ranges = []
        for symbol, bars in by_symbol.items():
            previous = self._previous_close.get(symbol)
            if previous is None and len(bars) >= 2:
                previous = bars[-2].close
            high, low = max(b.high for b in bars), min(b.low for b in bars)
            ranges.append(Week52(symbol, high, low, previous))
        return ranges

    # -- streaming ----------------------------------------------------------------------------

    def trade_stream(self, symbols: Sequence[str]) -> TradeStream | None:
        if not self._stream_enabled:
            return None
        return AlpacaStream(
            self._stream_url,
            self._key_id,
            self._secret_key,
            symbols,
            self.dropped,
            symbol_limit=self._stream_symbol_limit,
            reconnect_max=self._reconnect_max,
            limit_wait=max(30.0, self._reconnect_max),
        )

    async def aclose(self) -> None:
        await self.http.aclose()
