"""Contract models built from the API's database rows."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from services.common.contract import Stock


def _number(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def stock_from_row(row: Any) -> Stock:
    """A Stock from a row of queries.STOCKS."""
    last, reference = row["last_price"], row["reference"]
    change = change_pct = None
    if last is not None and reference:
        change = float(last - reference)
        change_pct = round(float((last - reference) / reference * 100), 4)
    return Stock(
        symbol=row["symbol"],
        name=row["name"],
        logo_url=row["logo_url"],
        week52_high=_number(row["week52_high"]),
        week52_low=_number(row["week52_low"]),
        previous_close=_number(row["previous_close"]),
        metadata_updated_at=row["metadata_updated_at"],
        last_price=_number(last),
        last_ts=row["last_ts"],
        change=change,
        change_pct=change_pct,
        source=row["source"],
        failover=row["failover"],
        state=row["state"],
        # stored as a `real`: 0.4 reads back as 0.4000000059604645
        progress=None if row["progress"] is None else round(row["progress"], 4),
        reason=row["reason"],
        origin=row["origin"],
    )


def removed_stock(symbol: str) -> Stock:
    """What a `stock` event says of a symbol no longer in the watchlist."""
    return Stock(
        symbol=symbol,
        name=None,
        logo_url=None,
        week52_high=None,
        week52_low=None,
        previous_close=None,
        metadata_updated_at=None,
        last_price=None,
        last_ts=None,
        change=None,
        change_pct=None,
        state="removed",
    )
