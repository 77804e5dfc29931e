"""Alpaca over real HTTP (a fake on a loopback port): snapshots, paged bars, limits, profiles."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.fetcher.providers.alpaca import AlpacaProvider
from services.fetcher.providers.base import ProviderError, ProviderFatal
from services.fetcher.validation import usable_profile
from tests.fakes.alpaca import SECRET_KEY, FakeAlpaca, png
from tests.fakes.server import Fault

SNAPSHOTS = "/v2/stocks/snapshots"
BARS = "/v2/stocks/bars"


@pytest.fixture
async def alpaca() -> AsyncIterator[FakeAlpaca]:
    fake = await FakeAlpaca().start()
    try:
        yield fake
    finally:
        await fake.stop()


class Drops:
    """A drop sink that counts by kind."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, kind: str, detail: str) -> None:
        self.counts[kind] += 1


def drops(provider: AlpacaProvider) -> Counter[str]:
    sink = provider._drop_sink
    assert isinstance(sink, Drops)
    return sink.counts


@pytest.fixture
async def provider(alpaca: FakeAlpaca) -> AsyncIterator[AlpacaProvider]:
    async with _provider(alpaca) as p:
        yield p


class _provider:
    """A provider pointed at the fake (closed afterwards); `drops` counts what it dropped."""

    def __init__(self, fake: FakeAlpaca, key_id: str = "", secret_key: str = "", **kw: Any) -> None:
        self.provider = AlpacaProvider(
            key_id or fake.key_id,
            secret_key or fake.secret_key,
            **fake.urls(),
            reconnect_max=0.2,
            **kw,
        )
        self.drops = Drops()
        self.provider.attach(self.drops)

    async def __aenter__(self) -> AlpacaProvider:
        return self.provider

    async def __aexit__(self, *_: object) -> None:
        await self.provider.aclose()


def _minute(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


def _row(bar: Any) -> tuple[Any, ...]:
    return (bar.symbol, bar.start, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades)


def _expected(fake: FakeAlpaca, symbol: str, start: datetime, end: datetime) -> list[tuple]:
    return [
        (
            symbol,
            datetime.fromisoformat(b["t"]),
            *(Decimal(str(b[k])) for k in "ohlc"),
            b["v"],
            b["n"],
        )
        for b in fake.minute_bars(symbol, start, end)
    ]


async def test_quotes_are_the_latest_trades_and_keys_travel_in_headers(
    alpaca: FakeAlpaca, provider: AlpacaProvider
) -> None:
    ticks = {t.symbol: t for t in await provider.quotes(["AAPL", "NVDA", "ZZZZ"])}
    assert set(ticks) == {"AAPL", "NVDA"}  # a symbol absent from the answer is omitted
    for symbol, tick in ticks.items():
        trade = alpaca.last_trades[symbol]
        assert trade["t"].endswith("Z") and len(trade["t"].split(".")[1]) == 10  # nanoseconds
        assert tick.ts == datetime.fromisoformat(trade["t"][:26]).replace(tzinfo=UTC)
        assert tick.price == Decimal(str(trade["p"])) and tick.volume == trade["s"]
    [call] = alpaca.calls(SNAPSHOTS)
    assert call.params == {"symbols": "AAPL,NVDA,ZZZZ", "feed": "iex"}
    assert call.headers["apca-api-key-id"] == alpaca.key_id
    assert call.headers["apca-api-secret-key"] == alpaca.secret_key


async def test_a_trade_already_seen_is_not_repeated(
    alpaca: FakeAlpaca, provider: AlpacaProvider
) -> None:
    await provider.quotes(["AAPL"])
    body = {"AAPL": {"latestTrade": {"t": "2026-12-03T15:51:44.208123456Z", "p": 10.5, "s": 3}}}
    alpaca.script(SNAPSHOTS, Fault.json(body), Fault.json(body))
    [tick] = await provider.quotes(["AAPL"])
    assert tick.ts == datetime(2026, 12, 3, 15, 51, 44, 208123, tzinfo=UTC)
    assert (tick.price, tick.volume) == (Decimal("10.5"), 3)
    assert await provider.quotes(["AAPL"]) == []  # no trade since


async def test_bars_follow_next_page_token_across_symbols(
    alpaca: FakeAlpaca, provider: AlpacaProvider
) -> None:
    end = _minute(datetime.now(UTC)) - timedelta(hours=1)
    start = end - timedelta(days=2)
    symbols = ["NVDA", "AAPL", "MSFT", "GE"]  # 4 x 2,880 minutes, less those without trades
    bars = await provider.bars(symbols, start, end)
    expected = [row for s in sorted(symbols) for row in _expected(alpaca, s, start, end)]
    assert [_row(b) for b in bars] == expected
    assert 10_000 < len(bars) < 4 * 2880  # more than a page; some minutes had no trade
    first, second = alpaca.calls(BARS)
    assert first.params == {
        "symbols": "NVDA,AAPL,MSFT,GE",
        "timeframe": "1Min",
        "start": start.isoformat().replace("+00:00", "Z"),
        "end": end.isoformat().replace("+00:00", "Z"),
        "feed": "iex",
        "limit": "10000",
        "adjustment": "raw",
        "sort": "asc",
    }
    assert second.params == {**first.params, "page_token": second.params["page_token"]}


async def test_many_symbols_share_few_requests(
    alpaca: FakeAlpaca, provider: AlpacaProvider
) -> None:
    end = _minute(datetime.now(UTC)) - timedelta(minutes=5)
    symbols = ["AAPL", *(f"Z{i:03d}" for i in range(249))]
    bars = await provider.bars(symbols, end - timedelta(minutes=30), end)
    assert {b.symbol for b in bars} == {"AAPL"} and len(bars) > 20
    calls = alpaca.calls(BARS)
    assert sorted(len(c.params["symbols"].split(",")) for c in calls) == [50, 100, 100]


async def test_the_end_is_exclusive_and_withheld_minutes_arrive_later(
    alpaca: FakeAlpaca, provider: AlpacaProvider
) -> None:
    end = _minute(datetime.now(UTC)) - timedelta(minutes=10)
    start = end - timedelta(hours=2)
    hole = (start + timedelta(minutes=30), start + timedelta(minutes=50))
    alpaca.withhold(*hole)
    early = await provider.bars(["AAPL"], start, end)
    assert early and all(start <= b.start < end for b in early)
    assert not [b for b in early if hole[0] <= b.start < hole[1]]
    alpaca.release()
    later = await provider.bars(["AAPL"], start, end)
    assert [_row(b) for b in later] == _expected(alpaca, "AAPL", start, end)
    assert len([b for b in later if hole[0] <= b.start < hole[1]]) > 10


GOOD = {"t": "2026-12-01T15:00:00Z", "o": 10.0, "h": 10.5, "l": 9.5, "c": 10.25, "v": 5, "n": 2}


async def test_a_bar_starting_at_the_end_is_left_out(alpaca: FakeAlpaca) -> None:
    start = datetime(2026, 12, 1, 15, tzinfo=UTC)
    end = start + timedelta(minutes=2)
    # Alpaca's `end` is inclusive: a bar starting at `end` belongs to the next window.
    items = [{**GOOD, "t": f"2026-12-01T15:0{m}:00Z"} for m in range(3)]
    alpaca.script(BARS, Fault.json({"bars": {"AAPL": items}, "next_page_token": None}))
    async with _provider(alpaca) as p:
        bars = await p.bars(["AAPL"], start, end)
    assert [b.start for b in bars] == [start, start + timedelta(minutes=1)]


async def test_malformed_bars_are_dropped_and_counted(alpaca: FakeAlpaca) -> None:
    items = [
        GOOD,
        {**GOOD, "t": "2026-12-01T15:01:00Z", "o": 10, "h": 11, "l": 10, "c": 10},  # whole numbers
        {k: v for k, v in GOOD.items() if k != "o"},
        {**GOOD, "c": "10.25"},  # a string for a number
        {**GOOD, "l": -1.0},
        {**GOOD, "h": 9.0},  # high below the close
        {**GOOD, "t": "2026-12-01T15:02:30Z"},  # not a minute's start
        {**GOOD, "t": "yesterday"},
        {**GOOD, "v": -5},
        {**GOOD, "n": 1.5},
        "junk",
    ]
    page = {"bars": {"AAPL": items, "NVDA": "junk"}, "next_page_token": None}
    alpaca.script(BARS, Fault.json(page))
    start = datetime(2026, 12, 1, tzinfo=UTC)
    async with _provider(alpaca) as p:
        bars = await p.bars(["AAPL", "NVDA"], start, start + timedelta(days=1))
    assert [b.start.minute for b in bars] == [0, 1]
    assert (bars[1].open, bars[1].high) == (Decimal(10), Decimal(11))
    assert drops(p) == {"invalid_fields": 10}


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault.json([]), "invalid_fields"),
        (Fault.json({"bars": [], "next_page_token": None}), "invalid_fields"),
        (Fault.json({"bars": {}, "next_page_token": 5}), "invalid_fields"),
        (Fault.html(200), "html_body"),
        (Fault(200, '{"bars": {'), "malformed_json"),
        (Fault.html(502), "http_5xx"),
    ],
)
async def test_a_malformed_page_fails_the_call(
    alpaca: FakeAlpaca, provider: AlpacaProvider, fault: Fault, kind: str
) -> None:
    alpaca.script(BARS, fault)
    end = _minute(datetime.now(UTC))
    with pytest.raises(ProviderError) as caught:
        await provider.bars(["AAPL"], end - timedelta(hours=1), end)
    assert caught.value.kind == kind


async def test_remaining_zero_waits_for_the_reset() -> None:
    fake = await FakeAlpaca(rate_limit=3, rate_period=1.0).start()
    try:
        async with _provider(fake) as p:
            for _ in range(7):
                await p.quotes(["AAPL"])
    finally:
        await fake.stop()
    assert len(fake.calls(SNAPSHOTS)) == 7
    assert fake.throttled == 0  # the client waited for X-RateLimit-Reset instead
    assert {r.headers.get("apca-api-key-id") for r in fake.requests} == {fake.key_id}


async def test_a_429_is_rate_limited_for_as_long_as_the_vendor_says(
    alpaca: FakeAlpaca, provider: AlpacaProvider
) -> None:
    alpaca.script(
        SNAPSHOTS, Fault.json({"message": "too many requests."}, 429, headers={"Retry-After": "1"})
    )
    with pytest.raises(ProviderError) as caught:
        await provider.quotes(["AAPL"])
    assert (caught.value.kind, caught.value.retry_after) == ("rate_limited", 1.0)

    reset = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + 5)}
    alpaca.script(BARS, Fault.json({"message": "too many requests."}, 429, headers=reset))
    end = _minute(datetime.now(UTC))
    with pytest.raises(ProviderError) as caught:
        await provider.bars(["AAPL"], end - timedelta(minutes=5), end)
    wait = caught.value.retry_after
    assert caught.value.kind == "rate_limited" and wait is not None and 2 < wait <= 5


async def test_5xx_timeouts_and_a_cut_vendor_are_provider_errors(alpaca: FakeAlpaca) -> None:
    async with _provider(alpaca, timeout=0.2) as p:
        alpaca.script(SNAPSHOTS, Fault.html(502), Fault.json({}, delay=1.0))
        kinds = []
        for _ in range(2):
            with pytest.raises(ProviderError) as caught:
                await p.quotes(["AAPL"])
            kinds.append(caught.value.kind)
        assert kinds == ["http_5xx", "timeout"]
        alpaca.cut()
        with pytest.raises(ProviderError) as caught:
            await p.quotes(["AAPL"])
        assert caught.value.kind == "http_5xx"
        alpaca.restore()
        assert [t.symbol for t in await p.quotes(["AAPL"])] == ["AAPL"]


async def test_wrong_keys_are_fatal_and_named_without_their_values(alpaca: FakeAlpaca) -> None:
    wrong = "not-the-secret-4411"
    async with _provider(alpaca, secret_key=wrong) as p:
        end = _minute(datetime.now(UTC))
        calls = [
            p.quotes(["AAPL"]),
            p.bars(["AAPL"], end - timedelta(minutes=5), end),
            p.profiles(["AAPL", "NVDA"]),
            p.week52(["AAPL"]),
        ]
        for call in calls:
            with pytest.raises(ProviderFatal) as caught:
                await call
            message = str(caught.value)
            assert caught.value.kind == "auth"
            assert "ALPACA_API_KEY_ID" in message and "ALPACA_API_SECRET_KEY" in message
            assert wrong not in message and alpaca.key_id not in message
            assert wrong not in repr(caught.value) and wrong not in repr(p)


async def test_profiles_carry_the_name_and_the_logo_inline(
    alpaca: FakeAlpaca, provider: AlpacaProvider
) -> None:
    profiles = {p.symbol: p for p in await provider.profiles(["AAPL", "GE", "ZZZZ"])}
    assert set(profiles) == {"AAPL", "GE"}  # ZZZZ is no asset: dropped
    aapl = profiles["AAPL"]
    assert aapl.name == "AAPL Inc. Common Stock"
    assert aapl.logo_url is not None and aapl.logo_url.startswith("data:image/png;base64,")
    assert base64.b64decode(aapl.logo_url.split(",", 1)[1]) == png("AAPL")
    assert usable_profile(aapl) is aapl  # the page may show it as it is
    ge = profiles["GE"]  # no logo at the vendor: the generated badge
    assert ge.logo_url is not None and ge.logo_url.startswith("data:image/svg+xml;base64,")
    logo_calls = [r for r in alpaca.requests if r.path.startswith("/v1beta1/logos/")]
    assert {r.params["placeholder"] for r in logo_calls} == {"false"}


@pytest.mark.parametrize(
    "fault",
    [
        Fault(200, b"\x89PNG" + b"x" * 60_000, "image/png"),  # past what a data URI may hold
        Fault(200, "<svg onload='alert(1)'/>", "image/svg+xml"),
        Fault(200, "", "image/png"),
    ],
)
async def test_an_unusable_logo_gives_the_badge(alpaca: FakeAlpaca, fault: Fault) -> None:
    alpaca.script("/v1beta1/logos/AAPL", fault)
    async with _provider(alpaca) as p:
        [profile] = await p.profiles(["AAPL"])
    assert profile.logo_url is not None and profile.logo_url.startswith("data:image/svg+xml")
    assert drops(p) == {"unusable_logo": 1}


async def test_week52_from_a_year_of_daily_bars(
    alpaca: FakeAlpaca, provider: AlpacaProvider
) -> None:
    ranges = {w.symbol: w for w in await provider.week52(["AAPL", "NVDA", "ZZZZ"])}
    assert set(ranges) == {"AAPL", "NVDA"}
    [call] = alpaca.calls(BARS)
    assert call.params["timeframe"] == "1Day" and call.params["feed"] == "iex"
    now = datetime.now(UTC)
    for symbol, got in ranges.items():
        daily = alpaca.daily_bars(symbol, now - timedelta(days=364), now)
        assert len(daily) >= 360
        assert got.high == Decimal(str(max(b["h"] for b in daily)))
        assert got.low == Decimal(str(min(b["l"] for b in daily)))
        snapshot = alpaca._snapshot(symbol)
        assert snapshot is not None
        assert got.previous_close == Decimal(str(snapshot["prevDailyBar"]["c"]))


async def test_the_fake_serves_a_calendar_and_pages_a_year_cheaply() -> None:
    fake = FakeAlpaca(calendar="XNYS", gap_fraction=0.0)
    start = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
    bars = fake.minute_bars("AAPL", start, start + timedelta(days=7))
    assert len(bars) == 5 * 390  # five sessions, 09:30 to 16:00 New York time
    assert bars[0]["t"] == "2026-01-05T14:30:00Z" and bars[-1]["t"] == "2026-01-09T20:59:00Z"
    again = FakeAlpaca(calendar="XNYS", gap_fraction=0.0).minute_bars(
        "AAPL", start + timedelta(days=2), start + timedelta(days=3)
    )
    assert again == bars[2 * 390 : 3 * 390]  # any range, reproducibly
    assert json.loads(json.dumps(bars[0])) == bars[0]


async def test_the_keys_never_reach_a_url_or_a_log(
    alpaca: FakeAlpaca, caplog: pytest.LogCaptureFixture
) -> None:
    # every logger at DEBUG, whatever an earlier test's logging set-up left on httpx's own
    caplog.set_level(logging.DEBUG, logger="httpx")
    caplog.set_level(logging.DEBUG, logger="httpcore")
    with caplog.at_level(logging.DEBUG):
        async with _provider(alpaca) as p:
            end = _minute(datetime.now(UTC))
            await p.quotes(["AAPL", "ZZZZ"])
            await p.bars(["AAPL"], end - timedelta(minutes=30), end)
            await p.profiles(["AAPL", "ZZZZ"])
            await p.week52(["AAPL"])
        async with _provider(alpaca, key_id="PKWRONG0000000000000") as wrong:
            with pytest.raises(ProviderFatal):
                await wrong.quotes(["AAPL"])
    assert any(r.name.startswith("httpx") for r in caplog.records)  # URLs were logged
    for secret in (alpaca.key_id, SECRET_KEY, "PKWRONG0000000000000"):
        assert secret not in caplog.text
        for r in alpaca.requests:
            assert secret not in r.path and secret not in json.dumps(r.params)


async def test_a_symbol_is_checked_with_the_assets_which_name_an_unknown_one(
    alpaca: FakeAlpaca, provider: AlpacaProvider
) -> None:
    assert await provider.check_symbol("AAPL") is None
    assert await provider.check_symbol("FOOBAR") == "Alpaca: asset not found for FOOBAR"
    assert [c.path for c in alpaca.requests] == ["/v2/assets/AAPL", "/v2/assets/FOOBAR"]
    limit = provider.symbol_limit()
    assert limit is not None and limit.count == 30
    assert limit.reason.startswith("Alpaca's IEX feed streams at most 30 symbols")
    async with _provider(alpaca, stream=False) as polled:
        assert polled.symbol_limit() is None  # polled over REST: no socket to fill
