"""The dashboard's only way to the data: the stockstreamer API over HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from services.common.contract import Bars, Market, Prices, Sessions, Stock
from services.dashboard.metrics import DashboardMetrics
from services.dashboard.watchlist import Watch, watch_of

log = logging.getLogger(__name__)
T = TypeVar("T")

# Heartbeats come every 15 s: three missed ones mean the stream is dead even if TCP says not.
STREAM_READ_TIMEOUT = 45.0
MAX_SYMBOLS = 50  # the API's limit per request


class ApiError(Exception):
    """The API could not be reached or answered something unusable."""


@dataclass(frozen=True, slots=True)
class Written:
    """What the API answered a write: its status, and its `detail` when it refused."""

    status: int
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.status < 400


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

    async def stocks(self) -> list[tuple[Stock, Watch]]:
        """Every stock of the watchlist with its metadata, last price and state (malformed ones
        are left out)."""
        return await self._get("/api/v1/stocks", _stocks)

    async def add_stock(self, symbol: str, token: str, client: str | None = None) -> Written:
        """POST /stocks: ask the API to track `symbol` (202), or its reason not to."""
        return await self._write("POST", "/api/v1/stocks", token, client, {"symbol": symbol})

    async def remove_stock(self, symbol: str, token: str, client: str | None = None) -> Written:
        """DELETE /stocks/{symbol}: stop tracking it (204), or the API's reason not to."""
        return await self._write("DELETE", f"/api/v1/stocks/{symbol}", token, client)

    async def _write(
        self,
        method: str,
        endpoint: str,
        token: str,
        client: str | None,
        body: dict[str, Any] | None = None,
    ) -> Written:
        """A write with the dashboard's token, on a viewer's behalf; ApiError when unreachable."""
        # The API counts a refused token against the viewer's address, not the dashboard's.
        headers = {"Authorization": f"Bearer {token}"}
        if client:
            headers["X-Forwarded-For"] = client
        label = endpoint if method == "POST" else "/api/v1/stocks/{symbol}"
        try:
            response = await self.http.request(method, endpoint, json=body, headers=headers)
        except httpx.HTTPError as exc:
            self.metrics.api_requests.labels(label, "error").inc()
            raise ApiError(f"{method} {label}: {type(exc).__name__}") from exc
        self.metrics.api_requests.labels(label, "ok" if response.is_success else "refused").inc()
        if response.is_success:
            return Written(response.status_code)
        return Written(response.status_code, _detail(response))

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


def _stocks(body: bytes) -> list[tuple[Stock, Watch]]:
    """The stocks of a `/stocks` answer; one malformed stock must not hide the others."""
    items = json.loads(body)
    if not isinstance(items, list):
        raise ValueError("expected a list")
    stocks = []
    for item in items:
        try:
            if not isinstance(item, dict):
                raise ValueError("a stock must be an object")
            stocks.append((Stock.model_validate(item), watch_of(item)))
        except ValueError as exc:  # a ValidationError too
            log.warning("malformed stock left out", extra={"error": str(exc)})
    return stocks


def _detail(response: httpx.Response) -> str:
    """The `detail` of an API error answer (a list of them joined), else its status line."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # a framework's validation errors: their messages
        detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    if isinstance(detail, str) and detail:
        return detail
    return f"{response.status_code} {response.reason_phrase}".strip()
