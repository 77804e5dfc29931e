"""A fake Finnhub: REST (/quote, /stock/profile2, /stock/metric) and the trade WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import Response
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

from tests.fakes.server import FakeVendor, fixture, json_response

KEY = "fh-test-key-5f2c9a"
PRICES = {"AAPL": 261.74, "NVDA": 185.0, "MSFT": 490.0, "GE": 290.0}
NO_LOGO = {"GE"}  # the vendor has no logo for these: the generated badge is used
# The fake's own protocol log would show the token it receives; only the client's log is on trial.
FAKE_LOG = logging.getLogger("tests.fakes.finnhub.socket")
FAKE_LOG.setLevel(logging.WARNING)


class FakeFinnhub:
    """Knows the symbols in PRICES; others answer like Finnhub answers an unknown symbol."""

    def __init__(self, key: str = KEY, trade_interval: float = 0.05) -> None:
        self.key = key
        self.prices = dict(PRICES)
        self.down = False  # cut: every REST call answers 503 and sockets are refused
        self.http = FakeVendor(
            {
                "/api/v1/quote": self._unless_down(self._quote),
                "/api/v1/stock/profile2": self._unless_down(self._profile),
                "/api/v1/stock/metric": self._unless_down(self._metric),
            }
        )
        self.trade_interval = trade_interval
        self.ws_down = False  # refuse new sockets (the handshake answers 503)
        self.ws_connects = 0
        self.subscriptions: list[list[str]] = []  # one list per connection, in order
        self.connections: set[ServerConnection] = set()
        self.trades_sent = 0
        self._ws: Server | None = None
        self.ws_url = ""

    def _unless_down(self, handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        def answer(request: Request) -> Response:
            if self.down:
                return Response("<html><body>503 Service Unavailable</body></html>", 503)
            return handler(request)

        return answer

    async def cut(self) -> None:
        """The whole vendor unreachable: REST answers 503, sockets dropped and refused."""
        self.down = self.ws_down = True
        await self.drop_connections()

    def restore(self) -> None:
        """The vendor back after a cut."""
        self.down = self.ws_down = False

    @property
    def base_url(self) -> str:
        return self.http.url + "/api/v1"

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("x-finnhub-token") == self.key

    def _quote(self, request: Request) -> Response:
        if not self._authorised(request):
            return json_response({"error": "Invalid API key"}, 401)
        symbol = request.query_params.get("symbol", "")
        if symbol not in self.prices:
            return json_response(fixture("finnhub/quote_unknown.json"))
        self.prices[symbol] *= 1 + random.uniform(-0.001, 0.001)
        quote = fixture("finnhub/quote.json")
        quote.update(c=round(self.prices[symbol], 2), t=int(time.time()))
        return json_response(quote)

    def _profile(self, request: Request) -> Response:
        if not self._authorised(request):
            return json_response({"error": "Invalid API key"}, 401)
        symbol = request.query_params.get("symbol", "")
        if symbol not in self.prices:
            return json_response({})
        profile = fixture("finnhub/profile2.json")
        profile.update(ticker=symbol, name=f"{symbol} Inc")
        profile["logo"] = (
            "" if symbol in NO_LOGO else f"https://static.finnhub.io/logo/{symbol}.png"
        )
        return json_response(profile)

    def _metric(self, request: Request) -> Response:
        if not self._authorised(request):
            return json_response({"error": "Invalid API key"}, 401)
        symbol = request.query_params.get("symbol", "")
        if symbol not in self.prices or request.query_params.get("metric") != "all":
            return json_response({})
        data = fixture("finnhub/metric.json")
        data["symbol"] = symbol
        return json_response(data)

    # -- WebSocket ------------------------------------------------------------------------------

    def _handshake(self, _conn: ServerConnection, request: WsRequest) -> WsResponse | None:
        token = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        if self.ws_down:
            return _conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "down\n")
        if token != self.key:
            return _conn.respond(HTTPStatus.UNAUTHORIZED, "invalid token\n")
        return None

    async def _socket(self, conn: ServerConnection) -> None:
        self.ws_connects += 1
        subscribed: list[str] = []
        self.subscriptions.append(subscribed)
        self.connections.add(conn)
        sender = asyncio.create_task(self._send_trades(conn, subscribed))
        try:
            async for raw in conn:
                message = json.loads(raw)
                if message.get("type") == "subscribe":
                    subscribed.append(message["symbol"])
        except Exception:  # noqa: BLE001, S110 - a dropped client is part of the test
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            self.connections.discard(conn)

    async def _send_trades(self, conn: ServerConnection, subscribed: list[str]) -> None:
        n = 0
        while True:
            await asyncio.sleep(self.trade_interval)
            n += 1
            if n % 10 == 0:
                await conn.send(json.dumps(fixture("finnhub/ws_ping.json")))
            data = []
            for symbol in subscribed:
                price = self.prices.get(symbol, 1.0) * (1 + random.uniform(-0.0005, 0.0005))
                data.append(
                    {
                        "p": round(price, 2),
                        "s": symbol,
                        "t": int(time.time() * 1000),
                        "v": random.randint(1, 300),
                        "c": ["1", "12"],
                    }
                )
            if data:
                await conn.send(json.dumps({"data": data, "type": "trade"}))
                self.trades_sent += len(data)

    async def drop_connections(self) -> None:
        """Close every socket abruptly, as a vendor restart or network cut would."""
        for conn in list(self.connections):
            conn.transport.abort()

    async def start(self) -> FakeFinnhub:
        await self.http.start()
        self._ws = await serve(
            self._socket, "127.0.0.1", 0, process_request=self._handshake, logger=FAKE_LOG
        )
        port = next(iter(self._ws.sockets)).getsockname()[1]
        self.ws_url = f"ws://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._ws is not None:
            self._ws.close()
            await self._ws.wait_closed()
        await self.http.stop()


def settings_env(fake: FakeFinnhub, **extra: Any) -> dict[str, str]:
    """Environment that points the fetcher at the fake."""
    return {
        "STOCKSTREAMER_PROVIDER": "finnhub",
        "FINNHUB_API_KEY": fake.key,
        "STOCKSTREAMER_FINNHUB_BASE_URL": fake.base_url,
        "STOCKSTREAMER_FINNHUB_WS_URL": fake.ws_url,
        **{k: str(v) for k, v in extra.items()},
    }
