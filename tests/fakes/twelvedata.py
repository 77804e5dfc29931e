"""A fake Twelve Data: /quote (batched), /logo and /time_series, numbers as strings."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tests.fakes.server import FakeVendor, fixture, json_response

KEY = "td-test-key-8e41b7"
PRICES = {"AAPL": 148.79, "NVDA": 185.0, "MSFT": 490.0, "GE": 290.0}
NO_LOGO = {"GE"}
STEPS = {"1min": 60, "5min": 300, "15min": 900, "30min": 1800, "1h": 3600}
FMT = "%Y-%m-%d %H:%M:%S"


class FakeTwelveData:
    """Knows the symbols in PRICES; answers others with the vendor's "not found" error."""

    def __init__(self, key: str = KEY) -> None:
        self.key = key
        self.prices = dict(PRICES)
        self.http = FakeVendor(
            {"/quote": self._quote, "/logo": self._logo, "/time_series": self._series}
        )

    @property
    def base_url(self) -> str:
        return self.http.url

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"apikey {self.key}"

    def _denied(self) -> Response:
        message = "**apikey** parameter is incorrect or not specified."
        return json_response({"code": 401, "message": message, "status": "error"})

    def _one_quote(self, symbol: str) -> dict[str, Any]:
        if symbol not in self.prices:
            return fixture("twelvedata/error_not_found.json")
        self.prices[symbol] *= 1 + random.uniform(-0.001, 0.001)
        quote = fixture("twelvedata/quote.json")
        quote.update(
            symbol=symbol,
            name=f"{symbol} Inc",
            close=f"{self.prices[symbol]:.5f}",
            timestamp=int(time.time()) // 60 * 60,  # the current 1-min bar
        )
        return quote

    def _quote(self, request: Request) -> Response:
        if not self._authorised(request):
            return self._denied()
        symbols = request.query_params.get("symbol", "").split(",")
        if len(symbols) == 1:
            return json_response(self._one_quote(symbols[0]))
        return json_response({s: self._one_quote(s) for s in symbols})

    def _logo(self, request: Request) -> Response:
        if not self._authorised(request):
            return self._denied()
        symbol = request.query_params.get("symbol", "")
        if symbol not in self.prices:
            return json_response(fixture("twelvedata/error_not_found.json"))
        logo = fixture("twelvedata/logo.json")
        logo["meta"]["symbol"] = symbol
        logo["url"] = "" if symbol in NO_LOGO else f"https://api.twelvedata.com/logo/{symbol}.com"
        return json_response(logo)

    def _series(self, request: Request) -> Response:
        if not self._authorised(request):
            return self._denied()
        q = request.query_params
        symbol = q.get("symbol", "")
        if symbol not in self.prices:
            return json_response(fixture("twelvedata/error_not_found.json"))
        step = STEPS[q.get("interval", "1min")]
        start = datetime.strptime(q["start_date"], FMT).replace(tzinfo=UTC)
        end = datetime.strptime(q["end_date"], FMT).replace(tzinfo=UTC)
        first = datetime.fromtimestamp(-(-start.timestamp() // step) * step, UTC)
        template = fixture("twelvedata/time_series.json")
        bar = template["values"][0]
        values: list[dict[str, str]] = []
        ts, price = first, self.prices[symbol]
        while ts <= end and len(values) < int(q.get("outputsize", "30")):
            opened, price = price, price * (1 + random.uniform(-0.001, 0.001))
            spread = abs(random.gauss(0, 0.0005))
            values.append(
                {
                    **bar,
                    "datetime": ts.strftime(FMT),
                    "open": f"{opened:.5f}",
                    "high": f"{max(opened, price) * (1 + spread):.5f}",
                    "low": f"{min(opened, price) * (1 - spread):.5f}",
                    "close": f"{price:.5f}",
                }
            )
            ts += timedelta(seconds=step)
        if not values:
            return json_response(fixture("twelvedata/error_no_data.json"))
        if q.get("order", "desc") != "asc":
            values.reverse()
        template["meta"].update(symbol=symbol, interval=q.get("interval", "1min"))
        template["values"] = values
        return json_response(template)

    async def start(self) -> FakeTwelveData:
        await self.http.start()
        return self

    async def stop(self) -> None:
        await self.http.stop()
