"""Ticks written as the fetcher writes them, and alerts added as the API adds them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from services.common.models import Tick
from services.fetcher.store import TickStore

ADD_ALERT = """
INSERT INTO alerts (symbol, condition, value, channels, note)
VALUES ($1, $2, $3, $4, $5)
RETURNING id
"""
DELETE_ALERT = "UPDATE alerts SET deleted_at = now() WHERE id = $1"
NOTIFY = "SELECT pg_notify($1, $2)"


class Market:
    """Live ticks through the fetcher's own store (one transaction and `NOTIFY prices` each)."""

    def __init__(self, store: TickStore) -> None:
        self.store = store
        self._last = datetime.now(UTC) - timedelta(minutes=5)

    @classmethod
    async def open(cls, url: str, symbols: list[str]) -> Market:
        conn = await asyncpg.connect(url)
        return cls(await TickStore.open(conn, symbols))

    async def ticks(self, *prices: tuple[str, float]) -> int:
        """Write (symbol, price) ticks in one batch, a millisecond apart; the last event id."""
        ticks = []
        for symbol, price in prices:
            self._last += timedelta(milliseconds=1)
            ticks.append(Tick(symbol, self._last, Decimal(str(price)), source="simulated"))
        written = await self.store.write_live(ticks)
        assert written.max_event_id is not None
        return written.max_event_id

    async def close(self) -> None:
        await self.store.conn.close()


async def add_alert(
    conn: asyncpg.Connection,
    symbol: str,
    condition: str,
    value: float,
    channels: list[str],
    note: str | None = None,
) -> int:
    """An alert as the API creates it: the row and `NOTIFY alerts` in one transaction."""
    async with conn.transaction():
        alert_id: int = await conn.fetchval(ADD_ALERT, symbol, condition, value, channels, note)
        await conn.execute(NOTIFY, "alerts", str(alert_id))
    return alert_id


async def delete_alert(conn: asyncpg.Connection, alert_id: int) -> None:
    async with conn.transaction():
        await conn.execute(DELETE_ALERT, alert_id)
        await conn.execute(NOTIFY, "alerts", str(alert_id))
