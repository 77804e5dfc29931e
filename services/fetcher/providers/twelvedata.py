"""Twelve Data (twelvedata.com): batched quotes with 52-week range, logos, and 1-min history."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field

from services.common.models import Bar, Profile, Tick, Week52
from services.fetcher.providers.badges import logo_data_uri
from services.fetcher.providers.base import (
    EpochSeconds,
    Provider,
    ProviderError,
    ProviderFatal,
    SymbolLimit,
)
from services.fetcher.providers.http import BadPayload, VendorClient, gather_per_symbol, validate

log = logging.getLogger(__name__)

MAX_BATCH = 120  # symbols per /quote call the vendor accepts
MAX_POINTS = 5000  # the largest `outputsize` of /time_series
# A window of 1-minute bars asked for in one call: at most MAX_POINTS minutes even on a feed that
# trades around the clock, so no call can be cut short.
BARS_SPAN = timedelta(minutes=MAX_POINTS)
FMT = "%Y-%m-%d %H:%M:%S"


class FiftyTwoWeek(BaseModel):
    # Twelve Data documents its numbers as JSON strings ("103.10"); non-numeric text is refused.
    low: Decimal = Field(gt=0)
    high: Decimal = Field(gt=0)


class Quote(BaseModel):
    """`GET /quote` for one symbol (numbers arrive as strings)."""

    symbol: str
    name: str | None = None
    timestamp: EpochSeconds
    close: Decimal
    previous_close: Decimal | None = None
    fifty_two_week: FiftyTwoWeek | None = None


class Logo(BaseModel):
    """`GET /logo`: `url` is empty when the vendor has no logo."""

    url: str | None = None


class Value(BaseModel):
    """One bar of `/time_series`: its start (in the requested time zone) and OHLCV as strings."""

    datetime: str
    open: Decimal | None = None
    high: Decimal | None = None
    low: Decimal | None = None
    close: Decimal
    volume: Decimal | None = None


class TimeSeries(BaseModel):
    """`GET /time_series`: `values` newest first unless `order=asc`."""

    values: list[Value]


def _check(data: Any, what: str) -> Any:
    """Vendor errors come as `{"code", "message", "status": "error"}`, often with HTTP 200."""
    if isinstance(data, dict) and data.get("status") == "error":
        code, message = data.get("code"), str(data.get("message", ""))
        if code == 429:
            raise ProviderError("rate_limited", f"twelvedata {what}: {message}")
        if code == 401:
            raise ProviderFatal("unauthorized", f"twelvedata {what}: {message}")
        if code == 403:  # an endpoint or symbol beyond the plan
            raise ProviderError("unauthorized", f"twelvedata {what}: {message}")
        if isinstance(code, int) and code >= 500:
            raise ProviderError("http_5xx", f"twelvedata {what}: {message}")
        raise BadPayload(
            "unknown_symbol" if code in (400, 404) else "vendor_error", f"{what}: {message}"
        )
    return data


def _volume(value: Value) -> int | None:
    return int(value.volume) if value.volume is not None and value.volume >= 0 else None


class TwelveDataProvider(Provider):
    """Free tier: 8 credits a minute, 800 a day; one credit per symbol per call."""

    name = "twelvedata"
    has_history = True

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str,
        rate_limit: int,
        rate_period: float,
        concurrency: int,
        timeout: float,
        daily_limit: int | None,
    ) -> None:
        self.http = VendorClient(
            "twelvedata",
            base_url,
            {"Authorization": f"apikey {api_key}"},
            rate_limit,
            rate_period,
            concurrency,
            timeout,
            daily_limit,
        )
        self._rate_period = rate_period
        self._last: dict[str, Quote] = {}
        self._last_ts: dict[str, int] = {}
        self._unknown: set[str] = set()

    async def _quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
        chunk = max(1, min(MAX_BATCH, self.http.rate_limit))
        found: dict[str, Quote] = {}
        for i in range(0, len(symbols), chunk):
            part = list(symbols[i : i + chunk])
            try:
                data = _check(
                    await self.http.get_json(
                        "/quote", {"symbol": ",".join(part), "interval": "1min"}, cost=len(part)
                    ),
                    "quote",
                )
            except BadPayload as exc:
                self.dropped(exc.kind, f"{','.join(part)}: {exc}")
                continue
            # One symbol answers with the quote itself, several with an object keyed by symbol.
            items = {part[0]: data} if len(part) == 1 else data
            if not isinstance(items, dict):
                self.dropped("invalid_fields", "quote: expected an object")
                continue
            for symbol in part:
                try:
                    quote = validate(Quote, _check(items.get(symbol), symbol), f"quote {symbol}")
                except BadPayload as exc:
                    if exc.kind == "unknown_symbol" and symbol not in self._unknown:
                        self._unknown.add(symbol)
                        log.warning(
                            "twelvedata does not know this symbol", extra={"symbol": symbol}
                        )
                    self.dropped(exc.kind, f"{symbol}: {exc}")
                    continue
                found[symbol] = self._last[symbol] = quote
        return found

    async def quotes(self, symbols: Sequence[str]) -> list[Tick]:
        ticks = []
        for symbol, quote in (await self._quotes(symbols)).items():
            if self._last_ts.get(symbol) == quote.timestamp:
                continue  # same bar as last round: nothing new
            self._last_ts[symbol] = quote.timestamp
            ticks.append(Tick(symbol, datetime.fromtimestamp(quote.timestamp, UTC), quote.close))
        return ticks

    async def check_symbol(self, symbol: str) -> str | None:
        """Twelve Data answers an unknown symbol (400/404) or one beyond the plan (403) with an
        error naming it; the quote of a known one is kept for its profile and range."""
        data = await self.http.get_json("/quote", {"symbol": symbol, "interval": "1min"})
        if (
            isinstance(data, dict)
            and data.get("status") == "error"
            and data.get("code") in (400, 403, 404)
        ):
            message = str(data.get("message", "")).replace("**", "").strip()
            return f"Twelve Data: {message or 'symbol not found'}"[:300]
        self._last[symbol] = validate(Quote, _check(data, "quote"), f"quote {symbol}")
        return None

    def symbol_limit(self) -> SymbolLimit:
        """A price round costs a credit per symbol: more symbols than credits in a rate period
        could not all be priced even once in it."""
        n = self.http.rate_limit
        return SymbolLimit(
            n,
            f"Twelve Data's plan gives {n} credits per {self._rate_period:g} s, so at most {n} "
            "symbols are tracked (STOCKSTREAMER_TWELVEDATA_RATE_LIMIT)",
        )

    async def _cached(self, symbols: Sequence[str]) -> dict[str, Quote]:
        """Latest quotes, fetching only those no price round has brought yet (credits are few)."""
        missing = [s for s in symbols if s not in self._last and s not in self._unknown]
        if missing:
            await self._quotes(missing)
        return {s: self._last[s] for s in symbols if s in self._last}

    async def _logo(self, symbol: str) -> str:
        data = _check(await self.http.get_json("/logo", {"symbol": symbol}), f"logo {symbol}")
        return validate(Logo, data, f"logo {symbol}").url or logo_data_uri(symbol)

    async def profiles(self, symbols: Sequence[str]) -> list[Profile]:
        quotes = await self._cached(symbols)
        logos = dict(
            await gather_per_symbol(
                list(quotes), lambda s: self._with_symbol(s, self._logo(s)), self.dropped
            )
        )
        return [Profile(s, q.name, logos.get(s) or logo_data_uri(s)) for s, q in quotes.items()]

    @staticmethod
    async def _with_symbol(symbol: str, value: Any) -> tuple[str, str]:
        return symbol, await value

    async def week52(self, symbols: Sequence[str]) -> list[Week52]:
        result = []
        for symbol, quote in (await self._cached(symbols)).items():
            if quote.fifty_two_week is None:
                self.dropped("invalid_fields", f"{symbol}: no fifty_two_week")
                continue
            w = quote.fifty_two_week
            result.append(Week52(symbol, w.high, w.low, quote.previous_close))
        return result

    async def _series(
        self, symbol: str, interval: str, start: datetime, end: datetime
    ) -> list[Value]:
        """`/time_series` values in [start, end], oldest first; none when the vendor has none."""
        params = {
            "symbol": symbol,
            "interval": interval,
            "timezone": "UTC",
            "order": "asc",
            "start_date": start.astimezone(UTC).strftime(FMT),
            "end_date": end.astimezone(UTC).strftime(FMT),
            "outputsize": str(MAX_POINTS),
        }
        try:
            data = _check(await self.http.get_json("/time_series", params), f"history {symbol}")
            return validate(TimeSeries, data, f"history {symbol}").values
        except BadPayload as exc:
            if "no data" not in str(exc).lower():  # "no data": e.g. nothing traded that weekend
                self.dropped(exc.kind, f"{symbol}: {exc}")
            return []

    async def bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> list[Bar]:
        """1-minute bars from `/time_series` (one credit per symbol per call, in spans that fit
        one call), oldest first per symbol."""
        bars: list[Bar] = []
        for symbol in symbols:
            bars += await self._symbol_bars(symbol, start, end)
        return bars

    async def _symbol_bars(self, symbol: str, start: datetime, end: datetime) -> list[Bar]:
        bars: list[Bar] = []
        lo = start
        while lo < end:
            hi = min(lo + BARS_SPAN, end)
            # end_date is inclusive at the vendor: ask up to the last minute before `hi`
            last = hi - timedelta(seconds=1)
            for value in await self._series(symbol, "1min", lo, last):
                bar = self._bar(symbol, value)
                if bar is not None and lo <= bar.start < hi:
                    bars.append(bar)
            lo = hi
        bars.sort(key=lambda b: b.start)
        return bars

    def _bar(self, symbol: str, value: Value) -> Bar | None:
        try:
            ts = datetime.fromisoformat(value.datetime).replace(tzinfo=UTC)
        except ValueError:
            self.dropped("invalid_fields", f"bars {symbol}: bad datetime")
            return None
        if value.open is None or value.high is None or value.low is None:
            self.dropped("invalid_fields", f"bars {symbol}: no open, high or low")
            return None
        volume = _volume(value)
        return Bar(
            symbol,
            ts,
            value.open,
            value.high,
            value.low,
            value.close,
            volume=volume,
            source=self.name,
        )

    async def aclose(self) -> None:
        await self.http.aclose()
