"""Alpaca's trade stream against a fake on a loopback port: auth, limits, drops, junk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from services.common.models import Tick
from services.fetcher.providers.alpaca import AlpacaProvider
from services.fetcher.providers.alpaca_stream import AlpacaStream, collapse
from services.fetcher.providers.base import ProviderFatal
from tests.fakes.alpaca import SECRET_KEY, FakeAlpaca
from tests.utils.waiting import eventually

SYMBOLS = ["AAPL", "NVDA", "MSFT"]


@pytest.fixture
async def alpaca() -> AsyncIterator[FakeAlpaca]:
    fake = await FakeAlpaca(trade_interval=0.02).start()
    try:
        yield fake
    finally:
        await fake.stop()


def stream_for(
    fake: FakeAlpaca, symbols: Sequence[str] = SYMBOLS, secret: str = "", **kw: Any
) -> AlpacaStream:
    options = {"reconnect_initial": 0.02, "reconnect_max": 0.1, "limit_wait": 0.1, **kw}
    return AlpacaStream(
        fake.stream_url,
        fake.key_id,
        secret or fake.secret_key,
        symbols,
        lambda *_: None,
        **options,
    )


class Running:
    """A stream's run() as a task, with every batch it delivered."""

    def __init__(self, stream: AlpacaStream) -> None:
        self.stream = stream
        self.batches: list[list[Tick]] = []
        self.task = asyncio.create_task(stream.run(self.batches.append))

    @property
    def ticks(self) -> list[Tick]:
        return [t for batch in self.batches for t in batch]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def running(stream: AlpacaStream) -> AsyncIterator[Running]:
    run = Running(stream)
    try:
        yield run
    finally:
        await run.stop()


async def test_trades_arrive_in_batches_once_subscribed(alpaca: FakeAlpaca) -> None:
    provider = AlpacaProvider(alpaca.key_id, alpaca.secret_key, **alpaca.urls())
    stream = provider.trade_stream(SYMBOLS)
    assert isinstance(stream, AlpacaStream) and not stream.connected
    assert stream.covered == frozenset(SYMBOLS)
    async with running(stream) as run:
        await eventually(lambda: len(run.batches) >= 5, message="no trades")
        assert stream.connected
    assert alpaca.subscribe_requests == [SYMBOLS] and alpaca.auths == 1
    assert all({t.symbol for t in batch} == set(SYMBOLS) for batch in run.batches)
    # nanosecond times keep their microseconds
    assert any(t.ts.microsecond for t in run.ticks)
    assert all(t.volume is not None and t.price > 0 for t in run.ticks)
    assert alpaca.ws_paths == ["/v2/iex"]  # nothing secret in the URL
    await provider.aclose()
    assert AlpacaProvider("k", "s", stream=False).trade_stream(SYMBOLS) is None


async def test_only_the_first_thirty_symbols_are_streamed(alpaca: FakeAlpaca) -> None:
    symbols = SYMBOLS + [f"Z{i:02d}" for i in range(32)]
    provider = AlpacaProvider(alpaca.key_id, alpaca.secret_key, **alpaca.urls())
    stream = provider.trade_stream(symbols)
    assert stream is not None
    assert stream.covered == frozenset(symbols[:30])
    assert isinstance(stream, AlpacaStream)
    async with running(stream):
        await eventually(lambda: stream.connected)
    assert alpaca.subscribe_requests == [symbols[:30]]
    assert stream.covered == frozenset(symbols[:30])
    await provider.aclose()


async def test_symbol_limit_exceeded_shrinks_the_stream_and_says_so_once(
    alpaca: FakeAlpaca, caplog: pytest.LogCaptureFixture
) -> None:
    alpaca.symbol_limit = 3  # a plan smaller than the 30 we assumed
    symbols = [*SYMBOLS, "GE", "AMZN"]
    stream = stream_for(alpaca, symbols)
    with caplog.at_level(logging.WARNING):
        async with running(stream) as run:
            await eventually(lambda: stream.connected)
            assert stream.covered == frozenset(symbols[:2])
            alpaca.drop_connections()
            await eventually(lambda: alpaca.auths == 2 and stream.connected)
            await eventually(lambda: len(run.batches) > 2)
    assert alpaca.subscribe_requests == [symbols, symbols[:2], symbols[:2]]
    said = [r for r in caplog.records if "symbol limit exceeded" in r.getMessage()]
    assert len(said) == 1 and said[0].__dict__["polled"] == 3
    assert {t.symbol for t in run.ticks} == set(symbols[:2])


async def test_connection_limit_exceeded_waits_longer_then_gets_in(alpaca: FakeAlpaca) -> None:
    async with running(stream_for(alpaca)) as first:
        await eventually(lambda: first.stream.connected)
        # (a wait far longer than the pause below: a busy machine may notice the refusal late)
        second = stream_for(alpaca, limit_wait=3.0)
        async with running(second):
            await eventually(lambda: alpaca.ws_connects == 2)
            await asyncio.sleep(0.3)
            # refused with 406; the next try waits limit_wait, not the 0.02 s of a drop
            assert alpaca.ws_connects == 2 and not second.connected
            await first.stop()
            await eventually(lambda: second.connected, timeout=10)
    assert alpaca.auths == 2


async def test_refused_keys_end_the_stream_with_provider_fatal(alpaca: FakeAlpaca) -> None:
    wrong = "not-the-secret-8812"
    run = Running(stream_for(alpaca, secret=wrong))
    with pytest.raises(ProviderFatal) as caught:
        await asyncio.wait_for(run.task, 5)
    message = str(caught.value)
    assert caught.value.kind == "auth" and "402" in message
    assert "ALPACA_API_KEY_ID" in message and "ALPACA_API_SECRET_KEY" in message
    assert wrong not in message and alpaca.key_id not in message
    assert alpaca.ws_connects == 1  # not retried


async def test_a_drop_reconnects_reauthenticates_and_resubscribes(alpaca: FakeAlpaca) -> None:
    async with running(stream_for(alpaca)) as run:
        await eventually(lambda: len(run.batches) > 3)
        alpaca.drop_connections()
        # (the drop is seen by the fake's second login: reconnecting may be quicker than a poll)
        await eventually(lambda: alpaca.auths == 2 and run.stream.connected)
        seen = len(run.batches)
        await eventually(lambda: len(run.batches) > seen + 3, message="no trades after")
    assert alpaca.subscriptions == [SYMBOLS, SYMBOLS]


@pytest.mark.parametrize(
    "error",
    [
        {"T": "error", "code": 500, "msg": "internal error"},
        {"T": "error", "code": 407, "msg": "slow client"},
    ],
)
async def test_a_server_error_reconnects(alpaca: FakeAlpaca, error: dict[str, Any]) -> None:
    async with running(stream_for(alpaca)) as run:
        await eventually(lambda: run.stream.connected)
        await alpaca.send([error])
        await eventually(lambda: alpaca.auths == 2 and run.stream.connected)


async def test_an_error_answering_auth_is_retried(alpaca: FakeAlpaca) -> None:
    alpaca.refuse_auth.append((409, "insufficient subscription"))
    async with running(stream_for(alpaca)) as run:
        await eventually(lambda: run.stream.connected)
    assert alpaca.ws_connects == 2 and alpaca.auths == 1


async def test_a_cut_vendor_is_retried_until_it_returns(alpaca: FakeAlpaca) -> None:
    async with running(stream_for(alpaca)) as run:
        await eventually(lambda: run.stream.connected)
        alpaca.cut()
        await eventually(lambda: len(alpaca.ws_paths) >= 4, message="no retries while cut")
        assert not run.stream.connected
        alpaca.restore()
        await eventually(lambda: run.stream.connected)
        seen = len(run.batches)
        await eventually(lambda: len(run.batches) > seen)


async def test_the_keys_never_reach_a_log(
    alpaca: FakeAlpaca, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        stream = stream_for(alpaca)
        async with running(stream) as run:
            await eventually(lambda: len(run.batches) > 2)
            alpaca.drop_connections()
            await eventually(lambda: alpaca.auths == 2 and stream.connected)
    # the socket's debug log shows every frame sent: the auth frame is masked
    frames = [r.getMessage() for r in caplog.records if r.name.endswith(".socket")]
    assert any('"action": "subscribe"' in f for f in frames)
    assert any("auth message redacted" in f for f in frames)
    for secret in (alpaca.key_id, SECRET_KEY):
        assert secret not in caplog.text and secret not in repr(stream)


def test_messages_become_ticks_and_junk_is_counted() -> None:
    drops: Counter[str] = Counter()
    stream = AlpacaStream("ws://x", "k-1", "s-1", ["AAPL"], lambda kind, _: drops.update([kind]))
    trade = {"T": "t", "S": "AAPL", "i": 96921, "x": "D", "p": 126.55, "s": 1, "c": ["@", "I"]}
    stamp = "2026-12-03T15:51:44.208123456Z"
    message = [
        {**trade, "t": stamp},
        {**trade, "S": "NVDA", "p": 140, "t": stamp},  # a whole-number price
        {"T": "q", "S": "AAPL", "bp": 1.0},  # not subscribed: ignored
        {**trade, "p": "126.55", "t": stamp},
        {**trade, "p": -1.0, "t": stamp},
        {**trade, "t": "today"},
        {**trade, "s": -3, "t": stamp},
        {"S": "AAPL"},
        "junk",
    ]
    parsed = stream.parse(json.dumps(message))
    ts = datetime(2026, 12, 3, 15, 51, 44, 208123, tzinfo=UTC)
    assert [(t.symbol, t.ts, t.price, t.volume) for t in parsed.ticks] == [
        ("AAPL", ts, Decimal("126.55"), 1),
        ("NVDA", ts, Decimal(140), 1),
    ]
    assert drops == {"invalid_fields": 6}
    assert stream.parse("<html>").ticks == [] and drops["malformed_json"] == 1
    assert stream.parse('{"T": "t"}').ticks == [] and drops["invalid_fields"] == 7
    errors = stream.parse('[{"T":"error","code":406,"msg":"connection limit exceeded"}]').errors
    assert [(e.code, e.message) for e in errors] == [(406, "connection limit exceeded")]
    ack = stream.parse('[{"T":"subscription","trades":["AAPL"],"quotes":[],"bars":[]}]')
    assert ack.subscribed == ["AAPL"]


def test_trades_in_the_same_microsecond_become_one_tick() -> None:
    ts = datetime(2026, 12, 3, 15, 51, 44, 208123, tzinfo=UTC)
    ticks = collapse(
        [
            Tick("AAPL", ts, Decimal("10.0"), 5),
            Tick("AAPL", ts, Decimal("10.5"), 7),
            Tick("NVDA", ts, Decimal("11.0"), 1),
        ]
    )
    assert [(t.symbol, t.price, t.volume) for t in ticks] == [
        ("AAPL", Decimal("10.5"), 12),
        ("NVDA", Decimal("11.0"), 1),
    ]
