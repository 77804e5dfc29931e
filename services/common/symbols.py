"""The one symbol pattern every service (and the database) checks against."""

from __future__ import annotations

import re
from collections.abc import Iterable

# Tickers such as GE, NVDA, BRK.B or RDS-A. The same pattern is a CHECK constraint in
# db/migrations, so a symbol that passes here is one the database accepts.
SYMBOL_PATTERN = r"^[A-Z][A-Z0-9]{0,9}([.-][A-Z0-9]{1,4})?$"
_SYMBOL_RE = re.compile(SYMBOL_PATTERN)
MAX_SYMBOL_LENGTH = 15
# What a person or a client may write: the same tickers in either case, upper-cased on the way in.
# ASCII only, so nothing that merely upper-cases into a ticker (such as "ß" into "SS") passes.
SYMBOL_INPUT_PATTERN = r"^[A-Za-z][A-Za-z0-9]{0,9}([.-][A-Za-z0-9]{1,4})?$"
_INPUT_RE = re.compile(SYMBOL_INPUT_PATTERN)
SYMBOL_RULE = (
    "1-10 letters or digits starting with a letter, optionally followed by '.' or '-' "
    "and a 1-4 character class suffix (e.g. BRK.B)"
)


class InvalidSymbolError(ValueError):
    """A symbol that does not match SYMBOL_PATTERN."""


def is_valid_symbol(symbol: str) -> bool:
    """Whether `symbol` matches the shared pattern."""
    return len(symbol) <= MAX_SYMBOL_LENGTH and _SYMBOL_RE.fullmatch(symbol) is not None


def is_symbol_input(text: str) -> bool:
    """Whether `text` matches SYMBOL_INPUT_PATTERN exactly (no surrounding whitespace)."""
    return _INPUT_RE.fullmatch(text) is not None


def normalize_symbol(symbol: str) -> str:
    """One symbol, stripped and upper-cased; InvalidSymbolError unless it is a ticker."""
    candidate = symbol.strip()
    if not is_symbol_input(candidate):
        raise InvalidSymbolError(f"invalid symbol {symbol!r}: expected {SYMBOL_RULE}")
    return candidate.upper()


def parse_symbols(value: str | Iterable[str]) -> list[str]:
    """Comma-separated text (or an iterable) as unique, validated symbols, in order."""
    items = value.split(",") if isinstance(value, str) else list(value)
    result: list[str] = []
    for item in items:
        if not item.strip():
            continue
        symbol = normalize_symbol(item)
        if symbol not in result:
            result.append(symbol)
    return result
