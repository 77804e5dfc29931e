"""The dashboard's only way to the data: the stockstreamer API over HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import httpx
from pydantic import ValidationError

from services.common.contract import Bars, Market, Prices, Sessions, Stock
from services.dashboard.metrics import DashboardMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")

# Heartbeats come every 15 s: three missed ones mean the stream is dead even if TCP says not.
STREAM_READ_TIMEOUT = 45.0
MAX_SYMBOLS = 50  # the API's limit per request


class ApiError(Exception):
    """The API could not be reached or answered something unusable."""


class ApiClient:
    """REST calls and the SSE stream request, on one connection pool per process."""

    def __init__(self, base_url: str, timeout: float, metrics: DashboardMetrics) -> None:
        self.base_url = base_url.rstrip("/")
        self.metrics = metrics
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": "stockstreamer-dashboard"},
        )
        self.stream_timeout = httpx.Timeout(timeout, read=STREAM_READ_TIMEOUT)

    async def _get(
        self,
        endpoint: str,
        parse: Callable[[bytes], T],
        params: dict[str, Any] | None = None,
        client: str | None = None,
    ) -> T:
        started = time.perf_counter()
        # On a viewer's behalf: the API (trusting this process as a proxy) counts the request
        # against the viewer's own limits, not against the dashboard's.
        headers = {"X-Forwarded-For": client} if client else None
        try:
            response = await self.http.get(endpoint, params=params, headers=headers)
            response.raise_for_status()
            data = parse(response.content)
        except (httpx.HTTPError, ValueError) as exc:  # a ValidationError is a ValueError
            self.metrics.api_requests.labels(endpoint, "error").inc()
            raise ApiError(f"GET {endpoint}: {exc!r}") from exc
        self.metrics.api_requests.labels(endpoint, "ok").inc()
        self.metrics.api_seconds.labels(endpoint).observe(time.perf_counter() - started)
        return data

    async def stocks(self) -> list[Stock]:
        """Every tracked stock with its metadata and last price (malformed ones are left out)."""
        return await self._get("/api/v1/stocks", _stocks)

    async def prices(
        self,
        symbols: Sequence[str],
        start_ms: int,
        end_ms: int | None,
        max_points: int,
        client: str | None = None,
    ) -> Prices:
        """Price history of `symbols` in [start, end], oldest first, at most `max_points` each.

        The API takes at most MAX_SYMBOLS symbols a request: more are asked for in chunks, and the
        answers joined. `client` is the viewer's address, when asked on a viewer's behalf.
        """
        chunks = [symbols[i : i + MAX_SYMBOLS] for i in range(0, len(symbols), MAX_SYMBOLS)]
        answers = await asyncio.gather(
            *(self._prices(chunk, start_ms, end_ms, max_points, client) for chunk in chunks or [[]])
        )
        series = [series for answer in answers for series in answer.series]
        return answers[0].model_copy(update={"series": series})

    async def _prices(
        self,
        symbols: Sequence[str],
        start_ms: int,
        end_ms: int | None,
        max_points: int,
        client: str | None,
    ) -> Prices:
        params: dict[str, Any] = {
            "symbols": ",".join(symbols),
            "start": start_ms,
            "max_points": max_points,
        }
        if end_ms is not None:
            params["end"] = end_ms
        return await self._get("/api/v1/prices", Prices.model_validate_json, params, client)

    async def bars(
        self, symbol: str, start_ms: int, max_bars: int, client: str | None = None
    ) -> Bars:
        """Stored open/high/low/close bars of one stock since `start`, at most `max_bars`."""
        params = {"symbols": symbol, "start": start_ms, "max_bars": max_bars, "interval": "auto"}
        return await self._get("/api/v1/bars", Bars.model_validate_json, params, client)

    async def market(self) -> Market:
        """The market's state: open or closed, and when it next opens and closes."""
        return await self._get("/api/v1/market", Market.model_validate_json)

    async def sessions(self, start_ms: int, end_ms: int, client: str | None = None) -> Sessions:
        """The market's open intervals in [start, end] (extended hours when the feed keeps them)."""
        params = {"start": start_ms, "end": end_ms}
        parse = Sessions.model_validate_json
        return await self._get("/api/v1/market/sessions", parse, params, client)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()


def _stocks(body: bytes) -> list[Stock]:
    """The stocks of a `/stocks` answer; one malformed stock must not hide the others."""
    items = json.loads(body)
    if not isinstance(items, list):
        raise ValueError("expected a list")
    stocks = []
    for item in items:
        try:
            stocks.append(Stock.model_validate(item))
        except ValidationError as exc:
            log.warning("malformed stock left out", extra={"error": str(exc)})
    return stocks
