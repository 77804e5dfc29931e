"""The interface every market-data provider implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from services.common.models import Profile, Tick, Week52


class ProviderError(Exception):
    """A failed provider call; `kind` labels the provider_errors metric (timeout, http_5xx, ...)."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class Provider(ABC):
    """Latest quotes, company profiles and 52-week ranges for many symbols per call."""

    name: str = "provider"

    @abstractmethod
    async def quotes(self, symbols: Sequence[str]) -> list[Tick]:
        """The latest tick of each symbol (omitting symbols with nothing new)."""

    @abstractmethod
    async def profiles(self, symbols: Sequence[str]) -> list[Profile]:
        """Company name and logo URL of each symbol."""

    @abstractmethod
    async def week52(self, symbols: Sequence[str]) -> list[Week52]:
        """The 52-week high and low of each symbol."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections; providers without any need not override it."""
