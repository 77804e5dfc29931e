"""The shared vendor client: the limiter holds the configured rate; Retry-After is read right."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate

import pytest

from services.fetcher.providers.base import ProviderError
from services.fetcher.providers.http import VendorClient, retry_after_seconds
from tests.fakes.finnhub import FakeFinnhub


async def test_the_limiter_holds_the_configured_rate(finnhub: FakeFinnhub) -> None:
    rate, period, n = 10, 1.0, 25
    client = VendorClient(
        "finnhub",
        finnhub.base_url,
        {"X-Finnhub-Token": finnhub.key},
        rate_limit=rate,
        rate_period=period,
        concurrency=8,
        timeout=5,
    )
    started = time.monotonic()
    try:
        await asyncio.gather(*(client.get_json("/quote", {"symbol": "AAPL"}) for _ in range(n)))
    finally:
        await client.aclose()
    times = sorted(r.at for r in finnhub.http.calls("/api/v1/quote"))
    assert len(times) == n
    # A full bucket lets `rate` through at once; after that, one every period/rate seconds.
    # A request arrives after the limiter lets it go, never before.
    for i in range(rate, n):
        assert times[i] - started >= (i - rate + 1) * period / rate
    assert times[-1] - started < (n - rate + 3) * period / rate  # and not much slower


async def test_a_refused_connection_is_a_provider_error() -> None:
    from services.runner.embedded_db import free_port

    client = VendorClient("x", f"http://127.0.0.1:{free_port()}", {}, 10, 1.0, 2, 1.0)
    try:
        with pytest.raises(ProviderError) as caught:
            await client.get_json("/quote", {})
    finally:
        await client.aclose()
    assert caught.value.kind == "connection"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3),
        ("0.5", 0.5),
        ("-2", 0),
        (None, None),
        ("", None),
        ("soon", None),
        ("86400", 300),
        ("nan", None),
    ],  # a day is clamped to five minutes
)
def test_retry_after_in_seconds(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


def test_retry_after_as_an_http_date() -> None:
    value = retry_after_seconds(formatdate(time.time() + 30, usegmt=True))
    assert value is not None and 28 <= value <= 31
