"""The simulated market: reproducible, plausible, self-consistent."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from services.fetcher.providers.badges import logo_data_uri
from services.fetcher.providers.simulated import SimulatedProvider

SYMBOLS = ["GE", "AMZN", "NVDA", "INTC", "AAPL", "NFLX", "ZZZ"]


async def _prices(seed: int, rounds: int) -> list[list[str]]:
    provider = SimulatedProvider(seed=seed)
    return [[str(t.price) for t in await provider.quotes(SYMBOLS)] for _ in range(rounds)]


async def test_same_seed_same_prices() -> None:
    assert await _prices(7, 20) == await _prices(7, 20)
    assert await _prices(7, 20) != await _prices(8, 20)


async def test_one_tick_per_symbol_with_increasing_times() -> None:
    provider = SimulatedProvider()
    first = await provider.quotes(SYMBOLS)
    second = await provider.quotes(SYMBOLS)
    assert [t.symbol for t in first] == SYMBOLS
    assert all(b.ts > a.ts for a, b in zip(first, second, strict=True))
    assert all(t.price > 0 and t.ts.tzinfo is not None for t in first + second)


async def test_realistic_levels() -> None:
    ticks = {t.symbol: t.price for t in await SimulatedProvider().quotes(SYMBOLS)}
    assert 20 < ticks["INTC"] < 60
    assert 150 < ticks["AAPL"] < 400


async def test_week52_contains_the_path() -> None:
    provider = SimulatedProvider(volatility=2.0)
    seen: dict[str, list[float]] = {s: [] for s in SYMBOLS}
    for _ in range(200):
        for t in await provider.quotes(SYMBOLS):
            seen[t.symbol].append(float(t.price))
    for w in await provider.week52(SYMBOLS):
        assert 0 < w.low <= w.high
        assert float(w.low) - 0.01 <= min(seen[w.symbol])
        assert max(seen[w.symbol]) <= float(w.high) + 0.01
        assert w.previous_close is not None and w.low <= w.previous_close <= w.high


async def test_profiles_have_names_and_svg_badges() -> None:
    profiles = await SimulatedProvider().profiles(["AAPL", "ZZZ"])
    assert profiles[0].name == "Apple Inc."
    assert profiles[1].name == "ZZZ (simulated)"
    for p in profiles:
        assert p.logo_url is not None and p.logo_url.startswith("data:image/svg+xml;base64,")


def test_logo_shows_the_ticker() -> None:
    svg = base64.b64decode(logo_data_uri("NVDA").split(",", 1)[1]).decode()
    assert svg.startswith("<svg") and ">NVDA</text>" in svg


async def test_a_month_of_history_stays_inside_the_52_week_band() -> None:
    # NVDA starts at its simulated 52-week low, so an unbounded walk back would leave the band
    provider = SimulatedProvider()
    end = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
    for symbol in SYMBOLS:
        (w,) = await provider.week52([symbol])
        bars = await provider.bars([symbol], end - timedelta(days=30), end)
        assert w.low <= min(b.low for b in bars) and max(b.high for b in bars) <= w.high, symbol


async def test_bars_follow_the_history_walk_minute_by_minute() -> None:
    end = datetime(2026, 3, 2, 15, 30, 20, tzinfo=UTC)
    start = end - timedelta(days=9)
    provider = SimulatedProvider(seed=3)
    assert provider.has_history
    bars = await provider.bars(["AAPL", "NVDA"], start, end)
    assert bars == await SimulatedProvider(seed=3).bars(["AAPL", "NVDA"], start, end)
    assert bars != await SimulatedProvider(seed=4).bars(["AAPL", "NVDA"], start, end)
    for symbol in ("AAPL", "NVDA"):
        mine = [b for b in bars if b.symbol == symbol]
        assert all(a.close == b.open for a, b in zip(mine, mine[1:], strict=False))
        steps = {b.start - a.start for a, b in zip(mine, mine[1:], strict=False)}
        assert steps == {timedelta(minutes=1), timedelta(minutes=15)}  # finer in the last week
        assert all(start <= b.start < end and b.start.second == 0 for b in mine)
        (w,) = await provider.week52([symbol])
        for b in mine:
            assert w.low <= b.low <= min(b.open, b.close) <= max(b.open, b.close) <= b.high
            assert b.high <= w.high and b.volume is not None and b.source == "simulated"
    assert mine[-1].close == Decimal("185.00")  # where NVDA's live path starts
    # asked in pieces, most recent first, the walk goes on where it stopped
    split = end - timedelta(days=1)
    again = SimulatedProvider(seed=3)
    pieces = await again.bars(["AAPL"], split, end)
    pieces = await again.bars(["AAPL"], start, split) + pieces
    assert pieces == [b for b in bars if b.symbol == "AAPL"]
