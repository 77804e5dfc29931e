"""Alpaca's real-time trade stream (IEX feed): authenticate, subscribe, batch trades into ticks."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from services.common.models import Tick
from services.common.retry import Backoff
from services.fetcher.providers.base import ProviderFatal, TickSink, pause_before_reconnect

log = logging.getLogger(__name__)

KEY_SETTINGS = "ALPACA_API_KEY_ID and ALPACA_API_SECRET_KEY"
# Documented error codes of the stream (`[{"T":"error","code":N,"msg":...}]`).
AUTH_FAILED = 402
SYMBOL_LIMIT = 405
CONNECTION_LIMIT = 406


class _Redact(logging.Filter):
    """The socket's debug log shows frames, the auth frame among them (possibly cut short, so a
    plain search for the secret would miss half of it): mask the whole frame and any secret."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message
        if '"action":"auth"' in redacted:
            redacted = redacted.split("{", 1)[0] + "{auth message redacted}"
        for secret in self.secrets:
            redacted = redacted.replace(secret, "***")
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_redact = _Redact()
_socket_log = logging.getLogger(f"{__name__}.socket")
_socket_log.addFilter(_redact)


class StreamError(Exception):
    """A documented error message from the stream: `code` and `msg` as Alpaca sent them."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


@dataclass
class Parsed:
    """What one message (a JSON array) carried."""

    ticks: list[Tick] = field(default_factory=list)
    errors: list[StreamError] = field(default_factory=list)
    control: list[str] = field(default_factory=list)  # "connected", "authenticated"
    subscribed: list[str] | None = None  # the trades channel of a `subscription` ack


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 time (nanoseconds allowed; microseconds kept) in UTC, or None."""
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts.astimezone(UTC) if ts.tzinfo is not None else None


def positive(value: object) -> Decimal | None:
    """A JSON number (decoded with Decimal floats) as a positive finite Decimal, else None."""
    if type(value) is Decimal:
        return value if value.is_finite() and value > 0 else None
    if type(value) is int and value > 0:
        return Decimal(value)
    return None


def count(value: object) -> int | None:
    """A non-negative JSON integer, else None."""
    return value if type(value) is int and value >= 0 else None


def collapse(ticks: Sequence[Tick]) -> list[Tick]:
    """One tick per symbol and microsecond: the last price, the sizes summed."""
    merged: dict[tuple[str, datetime], Tick] = {}
    for tick in ticks:
        key = (tick.symbol, tick.ts)
        before = merged.get(key)
        if before is not None and (before.volume is not None or tick.volume is not None):
            tick = Tick(tick.symbol, tick.ts, tick.price, (before.volume or 0) + (tick.volume or 0))
        merged[key] = tick
    return list(merged.values())


class AlpacaStream:
    """One socket (the free plan allows one), at most `symbol_limit` symbols; the rest are
    polled over REST. Reconnects by itself; wrong keys end it with ProviderFatal."""

    def __init__(
        self,
        url: str,
        key_id: str,
        secret_key: str,
        symbols: Sequence[str],
        on_drop: Callable[[str, str], None],
        *,
        symbol_limit: int = 30,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 30.0,
        limit_wait: float = 30.0,
        reply_timeout: float = 10.0,
    ) -> None:
        self.url = url  # carries no secret: the keys travel in the auth message
        self._key_id = key_id
        self._secret_key = secret_key
        self.symbols = list(dict.fromkeys(symbols))
        self._wanted = self.symbols[: max(0, symbol_limit)]
        self._covered = frozenset(self._wanted)
        self._on_drop = on_drop
        self._initial = reconnect_initial
        self._max = reconnect_max
        self._limit_wait = limit_wait
        self._reply_timeout = reply_timeout
        self._connected = False
        self._was_healthy = False
        self._shrunk = False
        _redact.secrets.update(s for s in (key_id, secret_key) if s)
        if len(self.symbols) > len(self._wanted):
            log.info(
                "the trade stream carries only the first symbols; the others are polled over REST",
                extra={
                    "streamed": len(self._wanted),
                    "polled": len(self.symbols) - len(self._wanted),
                },
            )

    def __repr__(self) -> str:
        return f"AlpacaStream({self.url!r}, symbols={len(self.symbols)})"

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def covered(self) -> frozenset[str]:
        return self._covered

    async def run(self, sink: TickSink) -> None:
        """Stream until cancelled; reconnect after drops (jittered, doubling waits)."""
        backoff = Backoff(self._initial, self._max)
        while True:
            floor = 0.0
            try:
                await self._session(sink)
                reason = "closed by the server"
            except StreamError as exc:
                if exc.code == AUTH_FAILED:
                    raise ProviderFatal(
                        "auth",
                        f"alpaca's trade stream refused the API keys ({exc}); check {KEY_SETTINGS}",
                    ) from None
                if exc.code == CONNECTION_LIMIT:
                    # Another session holds the plan's one connection (a second fetcher, or the
                    # server has not yet noticed our last socket died): retrying soon is futile.
                    floor = self._limit_wait
                reason = str(exc)
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                reason = type(exc).__name__
            except Exception as exc:  # a bug or an unforeseen message must not end the stream
                log.exception("trade stream failed")
                reason = type(exc).__name__
            await pause_before_reconnect(log, backoff, self._was_healthy, self.url, reason, floor)

    async def _session(self, sink: TickSink) -> None:
        self._was_healthy = False
        try:
            async with connect(
                self.url, logger=_socket_log, open_timeout=10, close_timeout=2, max_size=2**23
            ) as ws:
                await self._expect(ws, "connected")
                # Alpaca closes a socket that has not authenticated within 10 s: send at once.
                auth = {"action": "auth", "key": self._key_id, "secret": self._secret_key}
                await ws.send(json.dumps(auth, separators=(",", ":")))
                await self._expect(ws, "authenticated")
                await self._subscribe(ws)
                self._connected = True
                self._was_healthy = True
                log.info(
                    "trade stream connected",
                    extra={"url": self.url, "symbols": len(self._covered)},
                )
                async for raw in ws:
                    parsed = self.parse(raw)
                    if parsed.subscribed is not None:
                        self._covered = frozenset(parsed.subscribed)
                    if parsed.ticks:
                        sink(parsed.ticks)
                    if parsed.errors:
                        raise parsed.errors[0]
        finally:
            self._connected = False

    async def _reply(self, ws: ClientConnection) -> Parsed:
        async with asyncio.timeout(self._reply_timeout):
            parsed = self.parse(await ws.recv())
        if parsed.errors:
            raise parsed.errors[0]
        return parsed

    async def _expect(self, ws: ClientConnection, control: str) -> None:
        while control not in (await self._reply(ws)).control:
            pass

    async def _subscribe(self, ws: ClientConnection) -> None:
        wanted = list(self._wanted)
        while wanted:
            await ws.send(json.dumps({"action": "subscribe", "trades": wanted}))
            try:
                while (parsed := await self._reply(ws)).subscribed is None:
                    pass
            except StreamError as exc:
                if exc.code != SYMBOL_LIMIT:
                    raise
                # The plan allows fewer symbols than asked; the server keeps none of the request.
                wanted = wanted[: len(wanted) // 2]
                continue
            self._covered = frozenset(parsed.subscribed)
            if len(wanted) < len(self._wanted):
                self._wanted = wanted  # no use asking for more on every reconnect
                if not self._shrunk:
                    self._shrunk = True
                    log.warning(
                        "alpaca's plan streams fewer symbols than asked (symbol limit exceeded);"
                        " the others are polled over REST",
                        extra={"streamed": len(wanted), "polled": len(self.symbols) - len(wanted)},
                    )
            return
        raise StreamError(SYMBOL_LIMIT, "symbol limit exceeded even for one symbol")

    def parse(self, raw: str | bytes) -> Parsed:
        """What one message carries; unusable items are counted and dropped."""
        parsed = Parsed()
        try:
            items = json.loads(raw, parse_float=Decimal)
        except ValueError:
            self._on_drop("malformed_json", "trade stream: message is not JSON")
            return parsed
        if not isinstance(items, list):
            self._on_drop("invalid_fields", "trade stream: message is not an array")
            return parsed
        ticks: list[Tick] = []
        for item in items:
            kind = item.get("T") if isinstance(item, dict) else None
            if kind == "t":
                tick = self._trade(item)
                if tick is not None:
                    ticks.append(tick)
            elif kind == "error":
                code = item.get("code")
                parsed.errors.append(
                    StreamError(code if type(code) is int else 0, str(item.get("msg", "")))
                )
            elif kind == "success":
                parsed.control.append(str(item.get("msg")))
            elif kind == "subscription":
                trades = item.get("trades")
                parsed.subscribed = (
                    [s for s in trades if isinstance(s, str)] if isinstance(trades, list) else []
                )
            elif not isinstance(kind, str):
                self._on_drop("invalid_fields", "trade stream: an item without a type")
            # Other types (quotes, bars, statuses, corrections) are not subscribed: ignored.
        parsed.ticks = collapse(ticks)
        return parsed

    def _trade(self, item: dict[str, Any]) -> Tick | None:
        symbol, price, ts = item.get("S"), positive(item.get("p")), parse_time(item.get("t"))
        size = item.get("s")
        if not isinstance(symbol, str) or not symbol or price is None or ts is None:
            self._on_drop("invalid_fields", f"trade stream: unusable trade {_brief(item)}")
            return None
        if size is not None and count(size) is None:
            self._on_drop("invalid_fields", f"trade stream: unusable size {_brief(item)}")
            return None
        return Tick(symbol, ts, price, size)


def _brief(item: dict[str, Any]) -> str:
    text = json.dumps(item, default=str)
    return text if len(text) <= 120 else text[:117] + "..."
