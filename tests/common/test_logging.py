"""Logs: readable lines by default, one JSON object per line on request."""

from __future__ import annotations

import json
import logging

import pytest

from services.common.logging import setup_logging


@pytest.fixture(autouse=True)
def _restore_root_logger() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_context(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    logging.getLogger("stockstreamer.test").info(
        "tick stored", extra={"symbol": "AAPL", "color_message": "\x1b[1mtick\x1b[0m"}
    )
    line = json.loads(capsys.readouterr().err.strip())
    assert line["message"] == "tick stored"
    assert line["level"] == "info" and line["logger"] == "stockstreamer.test"
    assert line["symbol"] == "AAPL"
    assert "color_message" not in line
    assert line["time"].endswith("+00:00")


def test_text_lines_append_context(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "text")
    logging.getLogger("x").warning("slow", extra={"ms": 12})
    logging.getLogger("x").debug("hidden")
    err = capsys.readouterr().err
    assert "WARNING" in err and "slow ms=12" in err
    assert "hidden" not in err


def test_exceptions_are_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("x").exception("failed")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "ValueError: bad" in json.loads(lines[0])["exception"]
