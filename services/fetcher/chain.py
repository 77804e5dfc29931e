"""The live providers in order of preference: the first healthy one serves, the next takes over."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from services.fetcher.metrics import FetcherMetrics
from services.fetcher.providers.base import Provider, ProviderError, TradeStream

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Member:
    """One provider of the chain, and what the fetcher has seen of it."""

    provider: Provider
    rank: int  # 0 is the most preferred
    out: bool = False  # refused for good (ProviderFatal): never asked again
    stream: TradeStream | None = None  # made the first time it serves
    stream_task: asyncio.Task[None] | None = None
    last_tick: float = -math.inf  # monotonic time of its last accepted tick
    next_probe: float = 0.0  # monotonic time of its next probe, while a worse one serves
    probing: bool = False

    @property
    def name(self) -> str:
        return self.provider.name

    @property
    def streaming(self) -> bool:
        """Whether its trade stream is delivering now."""
        return self.stream is not None and self.stream.connected


SwitchHook = Callable[[Member, Member, str], None]


@dataclass
class ProviderChain:
    """Which provider serves live prices, and when another must take over.

    The serving provider has failed when no tick has come from it for `failover_after` seconds
    while the market is open (a polled vendor is given two rounds at least). The next one down
    takes over; better ones are probed every `failover_after` seconds and take back over after a
    probe that brings ticks. A provider whose keys are refused is out for good.
    """

    providers: Sequence[Provider]
    metrics: FetcherMetrics
    failover_after: float
    price_interval: float
    on_switch: SwitchHook | None = None
    clock: Callable[[], float] = time.monotonic
    members: list[Member] = field(init=False)
    _active: int = field(init=False, default=0)
    _since: float = field(init=False, default=0.0)  # when silence of the serving one counts from

    def __post_init__(self) -> None:
        names = [p.name for p in self.providers]
        if not names:
            raise ValueError("a provider chain needs at least one provider")
        if len(set(names)) != len(names):
            raise ValueError(f"a provider appears twice in the chain: {','.join(names)}")
        self.members = [Member(p, rank) for rank, p in enumerate(self.providers)]
        self._since = self.clock()
        for member in self.members:
            self.metrics.active_source.labels(member.name).set(int(member.rank == 0))
            self.metrics.provider_out.labels(member.name).set(0)

    @property
    def active(self) -> Member:
        """The member serving live prices now."""
        return self.members[self._active]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def all_out(self) -> bool:
        return all(m.out for m in self.members)

    @property
    def window(self) -> float:
        """Seconds of silence that mean the serving provider has failed."""
        return max(self.failover_after, 2 * self.price_interval)

    def member(self, provider: Provider) -> Member:
        return next(m for m in self.members if m.provider is provider)

    def heard(self, member: Member) -> None:
        """Ticks came from `member`."""
        member.last_tick = self.clock()

    def market_opened(self) -> None:
        """Silence while closed is no failure: count it from the open; probe at once."""
        now = self.clock()
        self._since = now
        for m in self.members:
            m.next_probe = now

    def silence(self) -> float:
        """Seconds since the serving provider last delivered (or since it could have)."""
        return self.clock() - max(self.active.last_tick, self._since)

    def check(self, market_open: bool) -> Member | None:
        """Fail over if the serving provider has been silent too long; the new one, or None."""
        if not market_open or self.silence() < self.window:
            return None
        return self.fail_over(f"no tick for {self.silence():.1f} s")

    def fail_over(self, reason: str) -> Member | None:
        """Hand over to the next provider that has not failed; None when there is none."""
        current = self.active
        below = [m for m in self.members[current.rank + 1 :] if not m.out]
        if not below:
            # Nobody healthier is known: stay, and start counting afresh (no log flood).
            self._since = self.clock()
            log.warning(
                "serving provider failed and no other can take over",
                extra={"provider": current.name, "reason": reason},
            )
            return None
        return self._switch(below[0], reason)

    def take_out(self, member: Member, error: ProviderError) -> Member | None:
        """`member` is refused for good; if it was serving, the best other one takes over."""
        if member.out:
            return None
        member.out = True
        self.metrics.provider_out.labels(member.name).set(1)
        log.error(
            "provider refused for good; taken out of the chain",
            extra={"provider": member.name, "kind": error.kind, "error": str(error)},
        )
        if member is not self.active:
            return None
        rest = [m for m in self.members if not m.out]
        if not rest:
            return None
        # The next one down first; above, the best one left (all have failed: try again).
        below = [m for m in rest if m.rank > member.rank]
        return self._switch((below or rest)[0], f"{member.name} refused")

    def due_probes(self) -> list[Member]:
        """Better providers than the serving one whose probe is due (while the market is open)."""
        now = self.clock()
        return [
            m
            for m in self.members[: self._active]
            if not m.out and not m.probing and m.next_probe <= now
        ]

    def probed(self, member: Member, ok: bool) -> Member | None:
        """A probe's outcome; a good one hands serving back to `member` if it is the better."""
        member.probing = False
        member.next_probe = self.clock() + self.failover_after
        self.metrics.probes.labels(member.name, "ok" if ok else "failed").inc()
        if not ok or member.out or member.rank >= self._active:
            return None
        member.last_tick = self.clock()
        return self._switch(member, "healthy again")

    def _switch(self, to: Member, reason: str) -> Member:
        previous = self.active
        self._active = to.rank
        now = self._since = self.clock()
        for m in self.members[: to.rank]:
            m.next_probe = now + self.failover_after
        self.metrics.active_source.labels(previous.name).set(0)
        self.metrics.active_source.labels(to.name).set(1)
        self.metrics.failovers.labels(previous.name, to.name).inc()
        log.warning(
            "live prices switch provider",
            extra={"from": previous.name, "to": to.name, "reason": reason},
        )
        if self.on_switch is not None:
            self.on_switch(previous, to, reason)
        return to
