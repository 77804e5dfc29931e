"""Finnhub's WebSocket trade feed: subscribe, batch trades into ticks, reconnect on a drop."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from websockets.asyncio.client import connect

from services.common.models import Tick
from services.common.retry import Backoff
from services.fetcher.providers.base import (
    EpochMillis,
    ProviderFatal,
    TickSink,
    pause_before_reconnect,
)

log = logging.getLogger(__name__)


class Trade(BaseModel):
    """One element of a `{"type": "trade", "data": [...]}` message."""

    model_config = ConfigDict(strict=True)
    s: str
    p: float
    t: EpochMillis
    v: float | None = Field(None, ge=0, allow_inf_nan=False)
    c: list[str] | None = None


class _Redact(logging.Filter):
    """The socket URL carries the key (Finnhub's only way); keep it out of library logs."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, ()
        return True


_redact = _Redact()
_socket_log = logging.getLogger(f"{__name__}.socket")
_socket_log.addFilter(_redact)


def collapse(trades: Sequence[Trade]) -> list[Tick]:
    """One tick per symbol and millisecond: the last price, with the volumes summed."""
    merged: dict[tuple[str, int], tuple[float, float]] = {}
    for trade in trades:
        _, volume = merged.get((trade.s, trade.t), (0.0, 0.0))
        merged[(trade.s, trade.t)] = (trade.p, volume + (trade.v or 0.0))
    return [
        Tick(symbol, datetime.fromtimestamp(t / 1000, UTC), Decimal(repr(p)), round(v))
        for (symbol, t), (p, v) in merged.items()
    ]


class FinnhubStream:
    """Keeps one socket open (the free tier allows one per key) and re-subscribes after drops."""

    def __init__(
        self,
        url: str,
        api_key: str,
        symbols: Sequence[str],
        on_drop: Callable[[str, str], None],
        reconnect_initial: float = 0.5,
        reconnect_max: float = 30.0,
    ) -> None:
        parts = urlsplit(url)
        query = "&".join(q for q in (parts.query, urlencode({"token": api_key})) if q)
        self._url = urlunsplit(parts._replace(query=query))
        self.safe_url = urlunsplit(parts)  # what the logs may show
        self.symbols = list(symbols)
        self._on_drop = on_drop
        self._initial = reconnect_initial
        self._max = reconnect_max
        self._connected = False
        self._was_healthy = False
        _redact.secrets.add(api_key)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def covered(self) -> frozenset[str]:
        return frozenset(self.symbols)

    async def run(self, sink: TickSink) -> None:
        """Stream until cancelled; on any drop wait (exponential, jittered) and reconnect."""
        backoff = Backoff(self._initial, self._max)
        while True:
            try:
                await self._session(sink)
                reason = "closed by the server"
            except websockets.InvalidStatus as exc:
                if exc.response.status_code == 401:
                    raise ProviderFatal(
                        "unauthorized", "finnhub trade stream: the key is refused (HTTP 401)"
                    ) from None
                reason = f"HTTP {exc.response.status_code}"
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                reason = type(exc).__name__
            except Exception as exc:  # a bug or an unforeseen message must not end the stream
                log.exception("trade stream failed")
                reason = type(exc).__name__
            await pause_before_reconnect(log, backoff, self._was_healthy, self.safe_url, reason)

    async def _session(self, sink: TickSink) -> None:
        self._was_healthy = False
        try:
            async with connect(
                self._url, logger=_socket_log, open_timeout=10, close_timeout=2, max_size=2**22
            ) as ws:
                for symbol in self.symbols:
                    await ws.send(json.dumps({"type": "subscribe", "symbol": symbol}))
                self._connected = True
                self._was_healthy = True
                log.info(
                    "trade stream connected",
                    extra={"url": self.safe_url, "symbols": len(self.symbols)},
                )
                async for raw in ws:
                    ticks = self.parse(raw)
                    if ticks:
                        sink(ticks)
        finally:
            self._connected = False

    def parse(self, raw: str | bytes) -> list[Tick]:
        """Ticks from one message; pings and junk give none (junk is counted)."""
        try:
            message = json.loads(raw)
        except ValueError:
            self._on_drop("malformed_json", "trade stream: message is not JSON")
            return []
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "ping":
            return []
        if kind == "error":
            self._on_drop("vendor_error", f"trade stream: {message.get('msg')}")
            return []
        if kind != "trade" or not isinstance(message.get("data"), list):
            self._on_drop("invalid_fields", f"trade stream: unexpected message type {kind!r}")
            return []
        trades = []
        for item in message["data"]:
            try:
                trades.append(Trade.model_validate(item))
            except ValidationError as exc:
                self._on_drop("invalid_fields", f"trade stream: {exc.errors()[0]['msg']}")
        return collapse(trades)
