"""Write tokens: where they come from, how they are checked, and the limit on guessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from services.api.auth import Failures, Tokens
from services.api.config import ApiSettings
from tests.api.conftest import TOKEN
from tests.utils.api import T0, Market, ThreadedApi, open_stream

URL = "postgresql://u@localhost/db"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
# Every write, with a body it would accept.
WRITES: list[tuple[str, str, Any]] = [
    ("POST", "/api/v1/stocks", {"symbol": "AMD"}),
    ("DELETE", "/api/v1/stocks/AAPL", None),
    ("POST", "/api/v1/alerts", {"symbol": "AAPL", "condition": "above", "value": 1}),
    ("DELETE", "/api/v1/alerts/1", None),
]
READS = (
    "/api/v1/stocks",
    "/api/v1/stocks/AAPL",
    "/api/v1/stocks/AAPL/logo",
    "/api/v1/prices?symbols=AAPL",
    "/api/v1/prices/latest",
    "/api/v1/bars",
    "/api/v1/prices.csv",
    "/api/v1/bars.csv",
    "/api/v1/market",
    "/api/v1/market/sessions",
    "/api/v1/alerts",
)


def test_tokens_come_from_the_setting_and_the_file(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text("# rotated 2026-12\nfile-token-aaaaaaaaaaaa\n\n  file-token-bbbbbbbbbbbb  \n")
    settings = ApiSettings(
        database_url=URL, api_token="env-token-cccccccccccc", api_tokens_file=file
    )
    assert settings.write_tokens() == [
        "env-token-cccccccccccc",
        "file-token-aaaaaaaaaaaa",
        "file-token-bbbbbbbbbbbb",
    ]
    assert "env-token-cccccccccccc" not in repr(settings)  # a secret, never printed
    tokens = Tokens(settings.write_tokens())
    assert tokens.configured
    assert tokens.accepts("file-token-bbbbbbbbbbbb")
    assert not tokens.accepts("file-token-bbbbbbbbbbbc")
    assert not tokens.accepts("")
    assert not Tokens([]).configured


def test_short_tokens_and_unreadable_files_are_settings_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="at least 16 characters"):
        ApiSettings(database_url=URL, api_token="short")
    with pytest.raises(ValidationError, match="api_tokens_file: cannot read it"):
        ApiSettings(database_url=URL, api_tokens_file=tmp_path / "missing")


def test_a_client_that_keeps_failing_is_held_back_alone() -> None:
    failures = Failures(limit=3)
    for _ in range(3):
        assert failures.blocked_for("10.0.0.1") == 0
        failures.add("10.0.0.1")
    assert 59 < failures.blocked_for("10.0.0.1") <= 60
    assert failures.blocked_for("10.0.0.2") == 0


async def test_writes_are_refused_while_no_token_is_configured(
    client: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("AAPL")
    for method, path, body in WRITES:
        response = await client.request(method, path, json=body, headers=BEARER)
        assert response.status_code == 403, path
        assert response.json()["detail"].startswith("writes are disabled")
    assert (await client.get("/api/v1/stocks")).status_code == 200  # reads stay open


async def test_a_write_without_the_right_token_is_401_with_a_challenge(
    writable: ThreadedApi, market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    await market.stocks("AAPL")
    async with writable.client() as anonymous:
        for method, path, body in WRITES:
            missing = await anonymous.request(method, path, json=body)
            wrong = await anonymous.request(
                method, path, json=body, headers={"Authorization": "Bearer wrong-token-xxxxxxxx"}
            )
            assert missing.status_code == wrong.status_code == 401, path
            assert missing.headers["www-authenticate"] == 'Bearer realm="stockstreamer"'
            assert wrong.headers["www-authenticate"].endswith('error="invalid_token"')
            assert missing.json() == {
                "detail": "a valid token is needed: Authorization: Bearer <token>"
            }
        basic = await anonymous.post("/api/v1/stocks", json={"symbol": "AMD"}, auth=("u", TOKEN))
    assert basic.status_code == 401  # only Bearer counts, whatever it carries
    assert writable.metric("stockstreamer_api_auth_failures_total", reason="missing") == 5
    assert writable.metric("stockstreamer_api_auth_failures_total", reason="wrong") == 4
    assert TOKEN not in caplog.text and "wrong-token" not in caplog.text
    assert (await _stocks(writable)) == ["AAPL"]  # nothing was written


async def test_the_right_token_writes(writer: httpx.AsyncClient, market: Market) -> None:
    await market.stocks("AAPL")
    added = await writer.post("/api/v1/stocks", json={"symbol": "AMD"})
    assert added.status_code == 202 and added.json()["state"] == "pending"


async def test_a_client_guessing_tokens_is_throttled_alone(
    database_url: str, market: Market
) -> None:
    api = ThreadedApi(database_url, api_token=TOKEN, api_auth_failures_per_minute=3).start()
    try:
        async with api.client("127.0.0.1") as guesser, api.client("127.0.0.2") as other:
            for attempt in range(3):
                bad = f"Bearer guess-{attempt:02d}-aaaaaaaaaaaaaaa"
                response = await guesser.post(
                    "/api/v1/stocks", json={"symbol": "AMD"}, headers={"Authorization": bad}
                )
                assert response.status_code == 401
            # the right token too: the client is held back, not the token checked
            held = await guesser.post("/api/v1/stocks", json={"symbol": "AMD"}, headers=BEARER)
            fine = await other.post("/api/v1/stocks", json={"symbol": "AMD"}, headers=BEARER)
    finally:
        api.stop()
    assert held.status_code == 429 and 1 <= int(held.headers["retry-after"]) <= 60
    assert held.json() == {"detail": "too many failed attempts, try again later"}
    assert fine.status_code == 202
    assert api.metric("stockstreamer_api_auth_failures_total", reason="throttled") == 1


async def test_reads_need_the_token_when_the_setting_says_so(
    database_url: str, market: Market
) -> None:
    await market.stocks("AAPL")
    api = ThreadedApi(
        database_url,
        api_token=TOKEN,
        api_read_token_required=True,
        api_auth_failures_per_minute=100,  # one refusal per read below
    ).start()
    try:
        # from two addresses: the anonymous one's failures would soon hold the other back
        async with api.client("127.0.0.2") as anonymous, api.client(**BEARER) as reader:
            for path in READS:
                refused = await anonymous.get(path)
                assert refused.status_code == 401, path
                assert refused.headers["www-authenticate"].startswith("Bearer")
                assert (await reader.get(path)).status_code == 200, path
            async with open_stream(reader) as stream:
                await market.ticks([("AAPL", T0, 1)])
                (price,) = await stream.prices(1)
            for path in ("/healthz", "/readyz", "/metrics"):
                assert (await anonymous.get(path)).status_code == 200, path
    finally:
        api.stop()
    assert price.data["symbol"] == "AAPL"


def test_reads_behind_a_token_need_one_configured() -> None:
    with pytest.raises(ValidationError, match="api_read_token_required needs a token"):
        ApiSettings(database_url=URL, api_read_token_required=True)


async def _stocks(api: ThreadedApi) -> list[str]:
    async with api.client() as http:
        return [s["symbol"] for s in (await http.get("/api/v1/stocks")).json()]
