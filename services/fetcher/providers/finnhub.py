"""Finnhub (finnhub.io): REST quotes, profiles and 52-week ranges, plus WebSocket trades."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.common.models import Profile, Tick, Week52
from services.fetcher.providers.badges import logo_data_uri
from services.fetcher.providers.base import (
    EpochSeconds,
    Provider,
    ProviderError,
    TradeStream,
)
from services.fetcher.providers.finnhub_stream import FinnhubStream
from services.fetcher.providers.http import (
    BadPayload,
    VendorClient,
    gather_per_symbol,
    validate,
)

log = logging.getLogger(__name__)


class Quote(BaseModel):
    """`GET /quote`: current price `c` at unix time `t`, previous close `pc`, day range."""

    # Finnhub documents JSON numbers; a string where a number belongs is malformed.
    model_config = ConfigDict(strict=True)
    c: float
    d: float | None = None
    dp: float | None = None
    h: float
    l: float  # noqa: E741 - Finnhub's field name
    o: float
    pc: float
    t: EpochSeconds


class CompanyProfile(BaseModel):
    """`GET /stock/profile2`: an unknown symbol answers `{}`."""

    name: str | None = None
    logo: str | None = None
    ticker: str | None = None


class _Week52(BaseModel):
    model_config = ConfigDict(strict=True)
    high: float = Field(alias="52WeekHigh", gt=0)
    low: float = Field(alias="52WeekLow", gt=0)


class BasicFinancials(BaseModel):
    """`GET /stock/metric?metric=all`: only the 52-week range is used."""

    metric: _Week52


def _decimal(value: float) -> Decimal:
    return Decimal(repr(value))


class FinnhubProvider(Provider):
    """Polls `/quote` per symbol (free tier: 60 calls/min); streams trades when enabled."""

    name = "finnhub"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str,
        ws_url: str,
        stream: bool,
        rate_limit: int,
        rate_period: float,
        concurrency: int,
        timeout: float,
        reconnect_max: float,
    ) -> None:
        self._api_key = api_key
        self._ws_url = ws_url
        self._stream_enabled = stream
        self._reconnect_max = reconnect_max
        # The key travels in a header, so it never appears in a logged URL.
        self.http = VendorClient(
            "finnhub",
            base_url,
            {"X-Finnhub-Token": api_key},
            rate_limit,
            rate_period,
            concurrency,
            timeout,
        )
        self._last_t: dict[str, int] = {}
        self._previous_close: dict[str, Decimal] = {}
        self._unknown: set[str] = set()

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        data = await self.http.get_json(path, params)
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            message = data["error"]
            if "limit" in message.lower():
                # Rate limit announced with HTTP 200: back off like a 429.
                raise ProviderError("rate_limited", f"finnhub {path}: {message}")
            raise BadPayload("vendor_error", f"{path}: {message}")
        return data

    def _unknown_symbol(self, symbol: str) -> None:
        if symbol not in self._unknown:
            self._unknown.add(symbol)
            log.warning("finnhub does not know this symbol; dropping it", extra={"symbol": symbol})
        self.dropped("unknown_symbol", symbol)

    async def _quote(self, symbol: str) -> Tick | None:
        quote = validate(Quote, await self._get("/quote", {"symbol": symbol}), f"quote {symbol}")
        if quote.c == 0 and quote.t == 0:
            self._unknown_symbol(symbol)
            return None
        if quote.pc > 0:
            self._previous_close[symbol] = _decimal(quote.pc)
        if self._last_t.get(symbol) == quote.t:
            return None  # market closed or no trade since the last round: nothing new to write
        self._last_t[symbol] = quote.t
        return Tick(symbol, datetime.fromtimestamp(quote.t, UTC), _decimal(quote.c))

    async def quotes(self, symbols: Sequence[str]) -> list[Tick]:
        return await gather_per_symbol(symbols, self._quote, self.dropped)

    async def check_symbol(self, symbol: str) -> str | None:
        """Finnhub answers an unknown symbol's quote with zeros (no price, no time)."""
        quote = validate(Quote, await self._get("/quote", {"symbol": symbol}), f"quote {symbol}")
        if quote.c == 0 and quote.t == 0:
            return "unknown symbol: Finnhub has no quote for it"
        return None

    async def _profile(self, symbol: str) -> Profile | None:
        data = await self._get("/stock/profile2", {"symbol": symbol})
        profile = validate(CompanyProfile, data, f"profile {symbol}")
        if not profile.name and not profile.ticker:
            self._unknown_symbol(symbol)
            return None
        return Profile(symbol, profile.name, profile.logo or logo_data_uri(symbol))

    async def profiles(self, symbols: Sequence[str]) -> list[Profile]:
        return await gather_per_symbol(symbols, self._profile, self.dropped)

    async def _week52(self, symbol: str) -> Week52 | None:
        data = await self._get("/stock/metric", {"symbol": symbol, "metric": "all"})
        if isinstance(data, dict) and not data.get("metric"):
            self._unknown_symbol(symbol)
            return None
        metric = validate(BasicFinancials, data, f"metric {symbol}").metric
        return Week52(
            symbol, _decimal(metric.high), _decimal(metric.low), self._previous_close.get(symbol)
        )

    async def week52(self, symbols: Sequence[str]) -> list[Week52]:
        return await gather_per_symbol(symbols, self._week52, self.dropped)

    def trade_stream(self, symbols: Sequence[str]) -> TradeStream | None:
        if not self._stream_enabled:
            return None
        return FinnhubStream(
            self._ws_url, self._api_key, symbols, self.dropped, reconnect_max=self._reconnect_max
        )

    async def aclose(self) -> None:
        await self.http.aclose()
