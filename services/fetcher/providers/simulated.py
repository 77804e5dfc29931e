"""A simulated market: geometric Brownian motion per symbol, reproducible from a seed."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

from services.common.models import Bar, Profile, Tick, Week52
from services.fetcher.config import FetcherSettings
from services.fetcher.providers.badges import logo_data_uri
from services.fetcher.providers.base import Provider

TRADING_SECONDS_PER_YEAR = 252 * 6.5 * 3600
CENT = Decimal("0.01")
# History: one point a minute over the last week, one every 15 minutes before that (a year of
# history is then ~45,000 points per symbol).
HISTORY_STEP_SECONDS = 60
HISTORY_FINE_SPAN = timedelta(days=7)
HISTORY_COARSE_STEP_SECONDS = 900
MINUTE_SIGMA = math.sqrt(60 / TRADING_SECONDS_PER_YEAR)  # one minute's share of a year's spread

# Realistic starting levels for well-known tickers; others get a level derived from the seed.
KNOWN: dict[str, tuple[str, float]] = {
    "AAPL": ("Apple Inc.", 270.0),
    "AMZN": ("Amazon.com, Inc.", 225.0),
    "GE": ("GE Aerospace", 290.0),
    "GOOGL": ("Alphabet Inc.", 280.0),
    "INTC": ("Intel Corporation", 38.0),
    "META": ("Meta Platforms, Inc.", 640.0),
    "MSFT": ("Microsoft Corporation", 490.0),
    "NFLX": ("Netflix, Inc.", 110.0),
    "NVDA": ("NVIDIA Corporation", 185.0),
    "TSLA": ("Tesla, Inc.", 420.0),
}
# Symbols the simulated market does not know (documented, so that a rejection can be seen
# without a vendor): every ticker starting with this.
UNKNOWN_PREFIX = "ZZ"
UNKNOWN_REASON = "unknown symbol"
# The settings' defaults, not restated here.
_DEFAULTS = FetcherSettings.model_fields


@dataclass
class _Path:
    rng: random.Random
    price: float
    high: float
    low: float
    previous_close: float
    last_ts: datetime | None = None


class SimulatedProvider(Provider):
    """No network, no key: one GBM step per symbol per `quotes()` call."""

    name = "simulated"
    has_history = True

    def __init__(
        self,
        seed: int = _DEFAULTS["sim_seed"].default,
        volatility: float = _DEFAULTS["sim_volatility"].default,
        drift: float = 0.05,
        step_seconds: float = _DEFAULTS["price_interval"].default,
    ) -> None:
        self.seed = seed
        self.volatility = volatility
        self.drift = drift
        self.step_seconds = step_seconds
        self._paths: dict[str, _Path] = {}
        self._walks: dict[tuple[str, str], _Walk] = {}

    def _path(self, symbol: str) -> _Path:
        path = self._paths.get(symbol)
        if path is None:
            path = self._paths[symbol] = self._new_path(symbol)
        return path

    def _new_path(self, symbol: str) -> _Path:
        rng = random.Random(f"{self.seed}:{symbol}")  # noqa: S311 - a simulation, not crypto
        start = KNOWN[symbol][1] if symbol in KNOWN else rng.uniform(15, 500)
        # A year of daily closes behind the start price gives a 52-week range consistent with it.
        daily_sigma = self.volatility / math.sqrt(252)
        closes = [start]
        for _ in range(251):
            closes.append(closes[-1] * math.exp(-daily_sigma * rng.gauss(0, 1)))
        return _Path(rng, start, max(closes), min(closes), previous_close=closes[1])

    def _step(self, path: _Path) -> float:
        dt = self.step_seconds / TRADING_SECONDS_PER_YEAR
        shock = path.rng.gauss(0, 1)
        sigma = self.volatility
        growth = (self.drift - 0.5 * sigma**2) * dt + sigma * math.sqrt(dt) * shock
        path.price *= math.exp(growth)
        path.high = max(path.high, path.price)
        path.low = min(path.low, path.price)
        return path.price

    async def quotes(self, symbols: Sequence[str]) -> list[Tick]:
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # whole ms, as clients see it
        ticks = []
        for symbol in symbols:
            path = self._path(symbol)
            # The tick's time must advance even if two rounds land in the same millisecond.
            ts = (
                now
                if path.last_ts is None or now > path.last_ts
                else path.last_ts + timedelta(milliseconds=1)
            )
            path.last_ts = ts
            price = Decimal(repr(self._step(path))).quantize(CENT)
            ticks.append(Tick(symbol, ts, max(price, CENT), volume=path.rng.randint(1, 500)))
        return ticks

    async def check_symbol(self, symbol: str) -> str | None:
        return UNKNOWN_REASON if symbol.startswith(UNKNOWN_PREFIX) else None

    async def profiles(self, symbols: Sequence[str]) -> list[Profile]:
        return [
            Profile(s, KNOWN[s][0] if s in KNOWN else f"{s} (simulated)", logo_data_uri(s))
            for s in symbols
        ]

    async def week52(self, symbols: Sequence[str]) -> list[Week52]:
        result = []
        for symbol in symbols:
            path = self._path(symbol)
            result.append(
                Week52(
                    symbol,
                    high=Decimal(repr(path.high)).quantize(CENT),
                    low=max(Decimal(repr(path.low)).quantize(CENT), CENT),
                    previous_close=Decimal(repr(path.previous_close)).quantize(CENT),
                )
            )
        return result

    async def bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> list[Bar]:
        """One bar per point of the walk (a minute apart over the last week, 15 before that).

        The bar starting at a point opens at the walk's price there and closes at the next
        point's (the newest closes at the live path's start price); its high and low reach a
        little beyond both, inside the 52-week band.
        """
        bars: list[Bar] = []
        for symbol in symbols:
            points = self._points(symbol, start, end, "bars")
            if not points:
                continue
            walk = self._walks[(symbol, "bars")]
            floor, ceiling = _cents(walk.low), _cents(walk.high)
            for p in points:
                opened, close = _cents(p.price), _cents(p.later)
                high = min(round(max(opened, close) * p.reach), ceiling)
                low = max(round(min(opened, close) / p.reach), floor)
                bars.append(
                    Bar(
                        symbol,
                        datetime.fromtimestamp(p.ts, UTC),
                        _price(opened),
                        _price(max(high, opened, close)),
                        _price(min(low, opened, close)),
                        _price(close),
                        volume=p.volume,
                        source=self.name,
                    )
                )
        return bars

    def _points(self, symbol: str, start: datetime, end: datetime, kind: str) -> list[_Point]:
        """The walk back from this run's start price, over [start, end), oldest first.

        Later calls for earlier times continue the same walk, so history asked for in pieces
        (the most recent first) joins up without a jump.
        """
        if end <= start:
            return []
        walk = self._walks.get((symbol, kind))
        if walk is None or end.timestamp() > walk.oldest:
            walk = self._walks[(symbol, kind)] = self._new_walk(symbol, end.timestamp())
        # Points sit on whole minutes (quarter hours before the last week), so a second run
        # produces the same (symbol, ts) keys.
        fine_from = max(start.timestamp(), walk.anchor - HISTORY_FINE_SPAN.total_seconds())
        times = _steps(fine_from, end.timestamp(), HISTORY_STEP_SECONDS)
        if start.timestamp() < fine_from:
            times += _steps(start.timestamp(), fine_from, HISTORY_COARSE_STEP_SECONDS)
        points = []
        for ts in times:
            if ts >= walk.oldest:
                continue  # already produced by an earlier call
            later = walk.price
            if walk.fresh:  # the newest point is where the live path starts
                walk.fresh, walk.oldest = False, ts
            else:
                self._walk_back(walk, ts)
            # The spread within the point's bar: a seeded share of a minute's volatility.
            reach = 1 + self.volatility * MINUTE_SIGMA * abs(walk.spread.gauss(0, 1))
            points.append(_Point(ts, walk.price, later, walk.rng.randint(100, 30_000), reach))
        points.reverse()
        return points

    def _new_walk(self, symbol: str, anchor: float) -> _Walk:
        origin = self._new_path(symbol)  # where the live path starts, and its 52-week range
        rng = random.Random(f"{self.seed}:{symbol}:history")  # noqa: S311 - a simulation
        spread = random.Random(f"{self.seed}:{symbol}:spread")  # noqa: S311 - a simulation
        return _Walk(rng, spread, origin.price, origin.low, origin.high, anchor, anchor)

    def _walk_back(self, walk: _Walk, ts: float) -> None:
        """Move the walk back to time `ts`: one GBM step, the law of live ticks, reversed."""
        dt = (walk.oldest - ts) / TRADING_SECONDS_PER_YEAR
        sigma = self.volatility
        growth = (self.drift - 0.5 * sigma**2) * dt + sigma * math.sqrt(dt) * walk.rng.gauss(0, 1)
        walk.price /= math.exp(growth)
        # Reflect off the 52-week range (in log space), so history never leaves its band.
        if walk.price < walk.low:
            walk.price = walk.low * walk.low / walk.price
        elif walk.price > walk.high:
            walk.price = walk.high * walk.high / walk.price
        walk.oldest = ts


class _Point(NamedTuple):
    """One point of a history walk, and the price at the next (newer) point."""

    ts: int
    price: float
    later: float
    volume: int
    reach: float  # how far the bar starting here reaches beyond its open and close (a factor)


@dataclass
class _Walk:
    """A history walk going back in time from `anchor`; `oldest` is where it has reached."""

    rng: random.Random
    spread: random.Random  # the bars' highs and lows, apart from the prices' own draws
    price: float
    low: float
    high: float
    anchor: float
    oldest: float
    fresh: bool = True


def _cents(price: float) -> int:
    """A price in whole cents, at least one (bars are made of many: integers are fast)."""
    return max(round(price * 100), 1)


def _price(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


def _steps(start: float, end: float, step: int) -> list[int]:
    """Epoch seconds on multiples of `step` in [start, end), newest first."""
    first = math.ceil(start / step) * step
    last = math.ceil(end / step) * step - step
    return list(range(last, first - 1, -step))
