"""Per-client limits: no one client address can take every stream, history slot or connection.

The process-wide caps (streams, history slots, pooled connections) answer 503 when the process
is saturated; each client address also gets only a share of them, and a rate of history reads,
beyond which it alone is answered 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import HTTPException, Request, status

from services.api.config import ApiSettings
from services.api.metrics import ApiMetrics
from services.common.clients import RateLimiter, Slots, TrustedProxies, client_key

SLOT_WAIT = 1.0  # seconds a request may wait for a slot (its client's, then the process's)
SHARE_RETRY_AFTER = 1  # seconds a client told it holds its share should wait
STREAM_RETRY_AFTER = 5  # seconds a refused stream client is told to wait
# Each limit's name, as metrics label it.
LIMITS = ("streams", "history_rate", "history_concurrency", "connections")


class TooMany(HTTPException):
    """A 429: this client is over one of its limits (others are still served)."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(
            status.HTTP_429_TOO_MANY_REQUESTS, detail, headers={"Retry-After": str(retry_after)}
        )


class Busy(HTTPException):
    """A 503 that tells the client when to come back: the process as a whole is saturated."""

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail, headers={"Retry-After": str(retry_after)}
        )


class ClientLimits:
    """Who a request comes from, and what each client (and the process) may hold at once."""

    def __init__(self, settings: ApiSettings, metrics: ApiMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.trusted = TrustedProxies(settings.trusted_proxies)
        self.history_rate = RateLimiter(settings.api_history_rate, settings.api_history_burst)
        self.streams = Slots(settings.api_max_streams_per_client)
        self.history = Slots(settings.api_history_concurrency_per_client)
        self.connections = Slots(settings.api_pool_size_per_client)
        self.history_slots = asyncio.Semaphore(settings.api_history_concurrency)
        for limit in LIMITS:
            metrics.client_refused.labels(limit)  # every series exists from the start, at 0

    def client(self, request: Request) -> str:
        """The key `request`'s client is counted under (see services.common.clients)."""
        peer = request.client.host if request.client else None
        # several X-Forwarded-For headers are one list, in order
        forwarded = ", ".join(request.headers.getlist("x-forwarded-for")) or None
        return client_key(self.trusted.client(peer, forwarded))

    def refuse(self, limit: str, detail: str, retry_after: int = SHARE_RETRY_AFTER) -> TooMany:
        self.metrics.client_refused.labels(limit).inc()
        return TooMany(detail, retry_after)

    def take_stream(self, client: str) -> None:
        """One of `client`'s streams (give it back with `streams.release`); else 429."""
        if not self.streams.acquire(client):
            limit = self.settings.api_max_streams_per_client
            raise self.refuse(
                "streams",
                f"too many open streams from this address (at most {limit}); "
                "close one or try again later",
                STREAM_RETRY_AFTER,
            )

    @asynccontextmanager
    async def connection_share(self, client: str) -> AsyncIterator[None]:
        """One of `client`'s share of the pooled connections, for as long as the block runs."""
        if not await self.connections.acquire_within(client, SLOT_WAIT):
            limit = self.settings.api_pool_size_per_client
            raise self.refuse(
                "connections",
                f"too many requests at once from this address (at most {limit}); try again shortly",
            )
        try:
            yield
        finally:
            self.connections.release(client)

    @asynccontextmanager
    async def history_read(self, client: str) -> AsyncIterator[None]:
        """One history read: within `client`'s rate and share, and one of the process's slots."""
        wait = self.history_rate.take(client)
        if wait:
            retry = RateLimiter.retry_after(wait)
            rate, burst = self.settings.api_history_rate, self.settings.api_history_burst
            raise self.refuse(
                "history_rate",
                f"too many history requests from this address (at most {rate:g} a second, "
                f"bursts of {burst}); try again in {retry} s",
                retry,
            )
        if not await self.history.acquire_within(client, SLOT_WAIT):
            limit = self.settings.api_history_concurrency_per_client
            raise self.refuse(
                "history_concurrency",
                f"too many history requests at once from this address (at most {limit}); "
                "try again shortly",
            )
        try:
            try:
                async with asyncio.timeout(SLOT_WAIT):
                    await self.history_slots.acquire()
            except TimeoutError:
                self.metrics.history_refused.inc()
                raise Busy("too many history requests at once, try again shortly") from None
            self.metrics.history_in_flight.inc()
            try:
                yield
            finally:
                self.metrics.history_in_flight.dec()
                self.history_slots.release()
        finally:
            self.history.release(client)
