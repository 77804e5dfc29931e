"""The OpenAPI document says what the API accepts, and schemathesis holds the API to it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from hypothesis import given
from hypothesis import strategies as st

from services.api.deps import (
    SYMBOLS_PATTERN,
    TIME_PATTERN,
    InvalidParameter,
    parse_time,
    symbol_path,
    symbols_query,
)
from services.common.symbols import (
    MAX_SYMBOL_LENGTH,
    SYMBOL_INPUT_PATTERN,
    SYMBOL_PATTERN,
    normalize_symbol,
)
from tests.utils.api import Market, ThreadedApi

HERE = Path(__file__).parent
TOKEN = "schemathesis-token-0123456789"  # writes are exercised too
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance,positive_data_acceptance"
)
# The stream is endless by design; its own tests cover it.
OPTIONS = (
    f"--checks {CHECKS} --exclude-path /api/v1/stream --phases examples,coverage,fuzzing "
    "--max-examples 20 --seed 20261125 --workers 4 --generation-database none --no-color "
    "--request-timeout 10"
)


async def test_schemathesis_finds_no_server_error_no_nonconformance_and_no_valid_request_refused(
    database_url: str, market: Market, tmp_path: Path
) -> None:
    # One client sends hundreds of requests from 4 workers: room for them all within its limits,
    # so that every refusal is the API's fault (the limits have tests of their own).
    # Room for every symbol and alert the writes add (the limits have tests of their own).
    api = ThreadedApi(
        database_url,
        api_history_rate=10_000,
        api_history_burst=100_000,
        api_history_concurrency_per_client=4,
        api_token=TOKEN,
        max_symbols=10_000,
        max_alerts=1_000_000,
    ).start()
    try:
        await _schemathesis(api, market, tmp_path)
    finally:
        api.stop()


async def _schemathesis(api: ThreadedApi, market: Market, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    await market.stocks("AAPL", "NVDA", "BRK.B")
    await market.profile("AAPL", "Apple", "https://logo.example/aapl.png")
    await market.week52("AAPL", 250, 150, previous_close=200)
    await market.series("AAPL", 1200, start=now - timedelta(hours=1), step=timedelta(seconds=2))
    await market.ticks([("NVDA", now - timedelta(minutes=5), 130.25)])

    # Run as a user would, with the statuses positive_data_acceptance allows (schemathesis.toml)
    # and the rules that tie parameters together (schemathesis_hooks.py).
    schemathesis = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(schemathesis), "--config-file", str(HERE / "schemathesis.toml"), "run"]
        + [f"{api.url}/openapi.json", *OPTIONS.split(), "-H", f"Authorization: Bearer {TOKEN}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HERE / "schemathesis_hooks.py")},
    )

    (tmp_path / "out.txt").write_text(result.stdout)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout and " 0 generated" not in result.stdout
    assert "schemathesis.toml" in result.stdout  # the strict statuses were in force


async def test_every_symbol_parameter_declares_the_pattern(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    declared: dict[str, list[dict[str, object]]] = {"symbol": [], "symbols": []}
    for operations in spec["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] in declared:
                    declared[parameter["name"]].append(parameter["schema"])
    assert len(declared["symbol"]) == 4 and len(declared["symbols"]) == 6
    for schema in declared["symbol"]:
        assert schema["pattern"] == SYMBOL_INPUT_PATTERN
        assert (schema["minLength"], schema["maxLength"]) == (1, MAX_SYMBOL_LENGTH)
    assert all(schema["pattern"] == SYMBOLS_PATTERN for schema in declared["symbols"])


@given(st.one_of(st.from_regex(SYMBOL_INPUT_PATTERN, fullmatch=True), st.text(max_size=16)))
def test_the_path_takes_exactly_the_declared_symbols(text: str) -> None:
    try:
        symbol = asyncio.run(symbol_path(text))
    except InvalidParameter:
        symbol = None
    if re.fullmatch(SYMBOL_INPUT_PATTERN, text):
        assert symbol == text.upper()
    else:
        assert symbol is None


@given(st.from_regex(SYMBOL_INPUT_PATTERN, fullmatch=True))
def test_a_symbol_in_either_case_is_the_shared_pattern_upper_cased(text: str) -> None:
    assert normalize_symbol(text) == text.upper()
    assert re.fullmatch(SYMBOL_PATTERN, text.upper())


@given(st.from_regex(SYMBOL_PATTERN, fullmatch=True))
def test_every_stored_symbol_may_be_asked_for(symbol: str) -> None:
    assert re.fullmatch(SYMBOL_INPUT_PATTERN, symbol) and re.fullmatch(
        SYMBOL_INPUT_PATTERN, symbol.lower()
    )


@given(st.from_regex(SYMBOLS_PATTERN, fullmatch=True))
def test_a_declared_symbol_list_is_accepted(text: str) -> None:
    parsed = asyncio.run(symbols_query(text))
    assert parsed is None if not text else 1 <= len(parsed or []) <= 50


@given(st.from_regex(TIME_PATTERN, fullmatch=True))
def test_a_declared_time_is_read(text: str) -> None:
    assert parse_time("start", text).tzinfo is not None
