"""One shared HTTP client per vendor: timeouts, connection limits, a rate limiter, Retry-After."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import httpx
from aiolimiter import AsyncLimiter
from pydantic import BaseModel, ValidationError

from services.fetcher.providers.base import ProviderError, ProviderFatal

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class BadPayload(Exception):
    """A response that arrived but cannot be used; dropped and counted by `kind`, never retried."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


# A vendor's Retry-After is obeyed up to this many seconds: a typo (or a hostile answer) of a
# day must not silence the feed for a day.
MAX_RETRY_AFTER = 300.0


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (a number or an HTTP date), at most MAX_RETRY_AFTER."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def validate(model: type[M], data: object, what: str) -> M:
    """`data` as `model`, or BadPayload("invalid_fields") naming the first problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadPayload("invalid_fields", f"{what}: {where}: {first['msg']}") from None


class VendorClient:
    """GETs JSON from one vendor, never faster than `rate_limit` per `rate_period` seconds."""

    def __init__(
        self,
        name: str,
        base_url: str,
        headers: Mapping[str, str],
        rate_limit: int,
        rate_period: float,
        concurrency: int,
        timeout: float,
        daily_limit: int | None = None,
    ) -> None:
        self.name = name
        self.rate_limit = rate_limit
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=dict(headers),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._limiter = AsyncLimiter(rate_limit, rate_period)
        # A day's quota as a second, slower bucket: spread out rather than spent by noon.
        self._daily = AsyncLimiter(daily_limit, 86_400) if daily_limit else None
        self._slots = asyncio.Semaphore(concurrency)
        self._paused_until = 0.0  # monotonic time before which a 429's Retry-After forbids calls

    async def _honour_pause(self) -> None:
        while (wait := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(wait)

    async def get_json(self, path: str, params: Mapping[str, str], cost: int = 1) -> Any:
        """The decoded JSON body; ProviderError for transport/HTTP failures, BadPayload for junk."""
        async with self._slots:
            await self._honour_pause()
            if self._daily is not None:
                await self._daily.acquire(min(cost, self._daily.max_rate))
            await self._limiter.acquire(cost)
            try:
                response = await self._client.get(path, params=params)
            except httpx.TimeoutException:
                raise ProviderError("timeout", f"{self.name} {path}: timed out") from None
            except httpx.HTTPError as exc:
                raise ProviderError(
                    "connection", f"{self.name} {path}: {type(exc).__name__}"
                ) from None
        return self._decode(path, response)

    def pause(self, seconds: float) -> None:
        """Send nothing for `seconds` (a vendor said it is rate limiting us)."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def _decode(self, path: str, response: httpx.Response) -> Any:
        status = response.status_code
        if status == 429:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            if wait:
                self.pause(wait)
            raise ProviderError("rate_limited", f"{self.name} {path}: HTTP 429", retry_after=wait)
        if status >= 500:
            raise ProviderError("http_5xx", f"{self.name} {path}: HTTP {status}")
        if status == 401:
            # The key itself is refused: no retry, no later round can mend that.
            raise ProviderFatal("unauthorized", f"{self.name} {path}: HTTP 401; check the key")
        if status == 403:  # often one endpoint beyond the plan, not the whole key
            raise ProviderError("unauthorized", f"{self.name} {path}: HTTP 403; check the plan")
        if status >= 400:
            raise ProviderError("http_4xx", f"{self.name} {path}: HTTP {status}")
        body = response.content.strip()
        if not body:
            raise BadPayload("empty_body", f"{path}: empty body")
        if "html" in response.headers.get("content-type", "") or body[:1] == b"<":
            raise BadPayload("html_body", f"{path}: HTML instead of JSON")
        try:
            return json.loads(body)
        except ValueError:
            raise BadPayload("malformed_json", f"{path}: body is not JSON") from None

    async def aclose(self) -> None:
        await self._client.aclose()


async def gather_per_symbol(
    symbols: Sequence[str],
    fetch: Callable[[str], Awaitable[T | None]],
    on_drop: Callable[[str, str], None],
) -> list[T]:
    """Run `fetch` per symbol; drop bad items, keep partial results, fail only if all failed."""
    outcomes = await asyncio.gather(*(fetch(s) for s in symbols), return_exceptions=True)
    results: list[T] = []
    errors: list[tuple[str, ProviderError]] = []
    for symbol, outcome in zip(symbols, outcomes, strict=True):
        if isinstance(outcome, BadPayload):
            on_drop(outcome.kind, f"{symbol}: {outcome}")
        elif isinstance(outcome, ProviderError):
            errors.append((symbol, outcome))
        elif isinstance(outcome, BaseException):
            raise outcome
        elif outcome is not None:
            results.append(outcome)
    limited = [e for _, e in errors if e.kind == "rate_limited"]
    if limited or (errors and len(errors) == len(symbols)):
        # The whole round is retried (after Retry-After) rather than half-done at random.
        raise (limited or [errors[0][1]])[0]
    for symbol, error in errors:
        on_drop(error.kind, f"{symbol}: {error}")
    return results
