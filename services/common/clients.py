"""Who a request comes from, and per-client limits that hold whatever the number of clients.

A request's client is its peer address, unless the peer is a trusted proxy (Caddy, or the
dashboard asking the API on a viewer's behalf): then it is the nearest untrusted hop of
`X-Forwarded-For`, read from the right, so that a client cannot choose its own address by
sending the header itself. IPv6 clients are keyed by their /64, which one host can fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
UNKNOWN = "unknown"  # a peer without an address (a Unix socket, a test transport)
RESOLVE_EVERY = 30.0  # seconds between lookups of trusted proxies given by name
# ... and while one of them does not resolve: a proxy that starts after us (the dashboard starts
# after the API) must not have its viewers counted as one client for long.
RESOLVE_RETRY = 2.0


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_key(address: str) -> str:
    """The key limits count under: an IPv4 address, an IPv6 /64, or the text as given."""
    parsed = _address(address)
    if parsed is None:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


class TrustedProxies:
    """Addresses, networks and host names whose `X-Forwarded-For` is believed.

    Host names (a compose service such as `proxy`) are looked up at start and every
    RESOLVE_EVERY seconds by `refresh()`, since a container's address changes when it restarts.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks: list[Network] = []
        self.names: list[str] = []
        for entry in (e.strip() for e in entries):
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.names.append(entry)
        self._resolved: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()

    def __bool__(self) -> bool:
        return bool(self.networks or self.names)

    def trusts(self, address: str) -> bool:
        parsed = _address(address)
        if parsed is None:
            return False
        return parsed in self._resolved or any(parsed in net for net in self.networks)

    async def refresh(self) -> bool:
        """Look the host names up again (a name that does not resolve now trusts nothing).

        True when every name resolved.
        """
        loop = asyncio.get_running_loop()
        found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        every = True
        for name in self.names:
            try:
                infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            except OSError as exc:
                log.debug("trusted proxy not resolved", extra={"name": name, "error": str(exc)})
                every = False
                continue
            for info in infos:
                address = _address(str(info[4][0]))
                if address is not None:
                    found.add(address)
        self._resolved = found
        return every

    async def keep_resolving(self) -> None:
        """Refresh forever (a task for the service's lifetime; nothing to do without names)."""
        while self.names:
            every = await self.refresh()
            await asyncio.sleep(RESOLVE_EVERY if every else RESOLVE_RETRY)

    def client(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address: the peer, or the nearest untrusted hop a trusted peer names."""
        if not peer:
            return UNKNOWN
        if not forwarded_for or not self.trusts(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if _address(hop) is None:
                return peer  # a hop we cannot read: count the request as the proxy's own
            if not self.trusts(hop):
                return hop
        return hops[0] if hops else peer


class RateLimiter:
    """A token bucket per client key: `rate` a second on average, bursts of `burst`.

    At most `max_keys` keys are remembered (the least recently seen are forgotten first), so
    memory stays bounded however many addresses ask.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def take(self, key: str) -> float:
        """0 when `key` may go now (and a token is spent); else seconds until it may."""
        now = self.clock()
        tokens, then = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait: float) -> int:
        """Whole seconds for a Retry-After header (at least 1)."""
        return max(1, math.ceil(wait))


class Slots:
    """Per-key counts of things held at once (open streams), each key at most `per_key`.

    `acquire` answers at once; `acquire_within` waits a while for one of the key's own slots, first
    come first served, so that a client's burst of parallel requests is queued behind its own
    requests rather than refused (or served at other clients' expense).
    """

    def __init__(self, per_key: int) -> None:
        if per_key < 1:
            raise ValueError("per_key must be at least 1")
        self.per_key = per_key
        self._held: dict[str, int] = {}
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def acquire(self, key: str) -> bool:
        """Take one of `key`'s slots; False when it holds them all."""
        count = self._held.get(key, 0)
        if count >= self.per_key:
            return False
        self._held[key] = count + 1
        return True

    async def acquire_within(self, key: str, timeout: float) -> bool:
        """Take one of `key`'s slots, waiting up to `timeout` seconds; False if none freed up."""
        if self.acquire(key):
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(key, deque())
        waiters.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            # handed a slot just as the time ran out: it is ours
            return fut.done() and not fut.cancelled()
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(key)  # handed a slot, but its taker is gone: pass it on
            raise
        finally:
            with contextlib.suppress(ValueError):
                waiters.remove(fut)
            if not waiters and self._waiters.get(key) is waiters:
                del self._waiters[key]
        return True

    def release(self, key: str) -> None:
        """Give one of `key`'s slots back: to its first waiter if it has one."""
        waiters = self._waiters.get(key)
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes on; the count stays
                return
        count = self._held.get(key, 0) - 1
        if count > 0:
            self._held[key] = count
        else:
            self._held.pop(key, None)  # nothing is kept for a client that holds nothing
