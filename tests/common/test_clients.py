"""Client addresses behind trusted proxies, and the per-client limits."""

from __future__ import annotations

import asyncio

import pytest

from services.common.clients import UNKNOWN, RateLimiter, Slots, TrustedProxies, client_key


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    trusted = TrustedProxies([])
    assert trusted.client("203.0.113.9", "198.51.100.1") == "203.0.113.9"
    assert trusted.client(None, "198.51.100.1") == UNKNOWN


def test_a_trusted_proxy_names_the_client_and_a_client_cannot_name_itself() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "192.0.2.7"])
    # Caddy appends the address it saw; whatever the client sent itself stays to the left.
    assert trusted.client("10.1.2.3", "1.2.3.4, 198.51.100.1") == "198.51.100.1"
    # through two trusted hops (the proxy, then the dashboard asking on the viewer's behalf)
    assert trusted.client("192.0.2.7", "198.51.100.1, 10.9.9.9") == "198.51.100.1"
    # an untrusted peer's header is ignored
    assert trusted.client("198.51.100.1", "10.1.2.3") == "198.51.100.1"
    # a hop that is no address: the request counts as the proxy's own
    assert trusted.client("10.1.2.3", "1.2.3.4, not-an-address") == "10.1.2.3"


async def test_proxies_named_by_host_are_trusted_once_resolved() -> None:
    trusted = TrustedProxies(["localhost"])
    assert not trusted.trusts("127.0.0.1")
    await trusted.refresh()
    assert trusted.trusts("127.0.0.1")
    assert trusted.client("127.0.0.1", "198.51.100.1") == "198.51.100.1"


def test_ipv6_clients_are_keyed_by_their_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("192.0.2.1") == "192.0.2.1"


def test_a_client_gets_its_burst_then_its_rate_and_others_are_unaffected() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2, burst=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0
    now[0] += 0.5
    assert limiter.take("a") == 0
    assert limiter.take("a") > 0
    assert RateLimiter.retry_after(0.01) == 1 and RateLimiter.retry_after(2.2) == 3


def test_a_limiter_remembers_a_bounded_number_of_clients() -> None:
    limiter = RateLimiter(rate=1, burst=1, max_keys=100)
    for i in range(1000):
        limiter.take(f"client-{i}")
    assert len(limiter._buckets) == 100


def test_slots_bound_each_client_and_forget_those_holding_none() -> None:
    slots = Slots(per_key=2)
    assert slots.acquire("a") and slots.acquire("a")
    assert not slots.acquire("a")
    assert slots.acquire("b")
    slots.release("a")
    assert slots.acquire("a")
    slots.release("a")
    slots.release("a")
    slots.release("b")
    assert slots._held == {}


async def test_a_client_waits_for_its_own_slot_first_come_first_served() -> None:
    slots = Slots(per_key=1)
    assert await slots.acquire_within("a", 0.1)
    first = asyncio.create_task(slots.acquire_within("a", 5))
    second = asyncio.create_task(slots.acquire_within("a", 5))
    await asyncio.sleep(0.01)
    assert await slots.acquire_within("b", 0.1)  # another client is not held up
    slots.release("a")  # handed to the first waiter, not to whoever asks next
    assert await first and not second.done()
    assert not slots.acquire("a")
    slots.release("a")
    assert await second
    slots.release("a")
    slots.release("b")
    assert slots._held == {} and slots._waiters == {}


async def test_a_wait_that_times_out_or_is_cancelled_holds_nothing() -> None:
    slots = Slots(per_key=1)
    assert slots.acquire("a")
    assert not await slots.acquire_within("a", 0.05)
    waiter = asyncio.create_task(slots.acquire_within("a", 5))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slots.release("a")
    assert slots._held == {} and slots._waiters == {}
    # cancelled just after being handed the slot: it passes on, it is not lost
    assert slots.acquire("a")
    handed = asyncio.create_task(slots.acquire_within("a", 5))
    await asyncio.sleep(0.01)
    slots.release("a")
    handed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handed
    assert slots._held == {} and slots._waiters == {}


async def test_names_that_do_not_resolve_yet_are_tried_again_soon() -> None:
    trusted = TrustedProxies(["localhost", "no-such-proxy.invalid"])
    assert not await trusted.refresh()  # one did not resolve: keep_resolving retries sooner
    assert trusted.trusts("127.0.0.1")
    assert await TrustedProxies(["localhost"]).refresh()
