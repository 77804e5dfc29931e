"""The interface every market-data provider implements."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, ClassVar, Protocol

from pydantic import Field

from services.common.models import Bar, Profile, Tick, Week52
from services.common.retry import Backoff

log = logging.getLogger(__name__)

# Receives (kind, detail) for every response or item a provider had to throw away.
DropSink = Callable[[str, str], None]
TickSink = Callable[[list[Tick]], None]

# The last second `datetime` can hold (9999-12-31): a vendor time beyond it is malformed data,
# refused by validation, rather than an OverflowError that would end a round or the stream.
MAX_EPOCH_SECONDS = 253_402_300_799
EpochSeconds = Annotated[int, Field(ge=0, le=MAX_EPOCH_SECONDS)]
EpochMillis = Annotated[int, Field(ge=0, le=MAX_EPOCH_SECONDS * 1000)]


@dataclass(frozen=True, slots=True)
class SymbolLimit:
    """At most `count` symbols, for the reason people are told when a symbol is beyond it."""

    count: int
    reason: str


class ProviderError(Exception):
    """A failed provider call; `kind` labels the provider_errors metric (timeout, http_5xx, ...)."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class ProviderFatal(ProviderError):
    """A failure retrying cannot mend (keys refused, plan too small): this provider is out."""


class HistoryUnavailable(Exception):
    """The provider cannot supply past prices (no endpoint, or not on this plan)."""


class TradeStream(Protocol):
    """A push feed of trades that reconnects by itself; `connected` while it delivers."""

    @property
    def connected(self) -> bool: ...

    @property
    def covered(self) -> frozenset[str]:
        """The symbols the stream delivers; the others are polled over REST while it runs."""

    async def run(self, sink: TickSink) -> None:
        """Deliver tick batches to `sink` until cancelled."""


async def pause_before_reconnect(
    logger: logging.Logger,
    backoff: Backoff,
    healthy: bool,
    url: str,
    reason: str,
    floor: float = 0.0,
) -> None:
    """Wait before a trade stream reconnects (REST is polled meanwhile), saying why."""
    if healthy:
        backoff.reset()  # a socket that delivered starts its back-off afresh
    delay = max(backoff.next(), floor)
    logger.warning(
        "trade stream down; polling REST until it is back",
        extra={"url": url, "reason": reason, "retry_in_s": round(delay, 2)},
    )
    await asyncio.sleep(delay)


def _log_drop(kind: str, detail: str) -> None:
    log.warning("provider data dropped", extra={"kind": kind, "detail": detail})


class Provider(ABC):
    """Latest quotes, company profiles and 52-week ranges for many symbols per call."""

    name: str = "provider"
    # Whether `bars` can serve past 1-minute bars (a history source for backfill and healing).
    has_history: ClassVar[bool] = False
    _drop_sink: DropSink | None = None

    def attach(self, sink: DropSink) -> None:
        """Send dropped responses and items to `sink` (the fetcher counts and logs them)."""
        self._drop_sink = sink

    def dropped(self, kind: str, detail: str) -> None:
        """Report one unusable response or item; it is never written."""
        (self._drop_sink or _log_drop)(kind, detail)

    @abstractmethod
    async def quotes(self, symbols: Sequence[str]) -> list[Tick]:
        """The latest tick of each symbol (omitting symbols with nothing new)."""

    @abstractmethod
    async def profiles(self, symbols: Sequence[str]) -> list[Profile]:
        """Company name and logo URL of each symbol."""

    @abstractmethod
    async def week52(self, symbols: Sequence[str]) -> list[Week52]:
        """The 52-week high and low of each symbol."""

    async def bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> list[Bar]:
        """1-minute bars of `symbols` starting in [start, end), oldest first per symbol.

        A minute without trades on the vendor's feed has no bar; the caller remembers that.
        """
        raise HistoryUnavailable(f"{self.name} has no history endpoint")

    def trade_stream(self, symbols: Sequence[str]) -> TradeStream | None:
        """A push feed of trades, when the provider has one and it is enabled."""
        return None

    async def check_symbol(self, symbol: str) -> str | None:
        """Why the vendor cannot serve `symbol` (it does not know it), or None when it can.

        ProviderError when the vendor could not be asked; the caller asks again later.
        """
        return None

    def symbol_limit(self) -> SymbolLimit | None:
        """The most symbols this provider serves as configured, and why; None: no such limit."""
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections; providers without any need not override it."""
