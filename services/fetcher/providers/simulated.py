"""A simulated market: geometric Brownian motion per symbol, reproducible from a seed."""

from __future__ import annotations

import base64
import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from services.common.models import Profile, Tick, Week52
from services.fetcher.providers.base import Provider

TRADING_SECONDS_PER_YEAR = 252 * 6.5 * 3600
CENT = Decimal("0.01")
# History: one point a minute, coarser only when a window would need more points than this.
HISTORY_STEP_SECONDS = 60
HISTORY_MAX_POINTS = 10_080

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
# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
BADGE_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000"]


def logo_data_uri(symbol: str) -> str:
    """An SVG badge with the ticker's letters, as a data URI."""
    colour = BADGE_COLOURS[int(hashlib.sha256(symbol.encode()).hexdigest(), 16) % 7]
    letters = symbol[:4]
    size = 30 if len(letters) <= 2 else 22 if len(letters) == 3 else 17
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">'
        f'<rect width="64" height="64" rx="14" fill="{colour}"/>'
        f'<text x="32" y="32" dy=".35em" text-anchor="middle" font-family="Helvetica,Arial,'
        f'sans-serif" font-weight="700" font-size="{size}" fill="#fff">{letters}</text></svg>'
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


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

    def __init__(
        self,
        seed: int = 42,
        volatility: float = 0.5,
        drift: float = 0.05,
        step_seconds: float = 1.0,
    ) -> None:
        self.seed = seed
        self.volatility = volatility
        self.drift = drift
        self.step_seconds = step_seconds
        self._paths: dict[str, _Path] = {}

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

    async def history(self, symbol: str, start: datetime, end: datetime) -> list[Tick]:
        """A past ending at this run's start price: a seeded walk backwards, a point a minute."""
        span = (end - start).total_seconds()
        if span <= 0:
            return []
        step = max(HISTORY_STEP_SECONDS, math.ceil(span / HISTORY_MAX_POINTS / 60) * 60)
        # Points sit on whole minutes, so a second run produces the same (symbol, ts) keys.
        anchor = math.ceil(end.timestamp() / step) * step - step
        rng = random.Random(f"{self.seed}:{symbol}:history")  # noqa: S311 - a simulation
        origin = self._new_path(symbol)  # where the live path starts, and its 52-week range
        price, low, high = origin.price, origin.low, origin.high
        dt = step / TRADING_SECONDS_PER_YEAR
        sigma = self.volatility
        ticks = []
        ts = anchor
        while ts >= start.timestamp():
            ticks.append(
                Tick(
                    symbol,
                    datetime.fromtimestamp(ts, UTC),
                    max(Decimal(repr(price)).quantize(CENT), CENT),
                    volume=rng.randint(100, 30_000),
                )
            )
            # Undo one GBM step: the same law as live ticks, run backwards in time.
            growth = (self.drift - 0.5 * sigma**2) * dt + sigma * math.sqrt(dt) * rng.gauss(0, 1)
            price /= math.exp(growth)
            # Reflect off the 52-week range (in log space), so history never leaves its band.
            if price < low:
                price = low * low / price
            elif price > high:
                price = high * high / price
            ts -= step
        ticks.reverse()
        return ticks
