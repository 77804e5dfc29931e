"""The alerts service's reads and writes, on the connection or pool it is given."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import asyncpg

from services.alerts import queries
from services.alerts.evaluator import AlertSpec, Outcome

Quote = tuple[float, datetime]
NO_LIMIT = 2**63 - 1  # the largest event id


def spec_of(row: asyncpg.Record) -> AlertSpec:
    return AlertSpec(row["id"], row["symbol"], row["condition"], row["value"], row["armed"])


class AlertStore:
    """Reads ticks and alerts, and stores each evaluation's outcome in one transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def prepare(self, channels: Iterable[str]) -> int:
        """Publish the configured channel names; the resume point (made on a first start)."""
        names = sorted(channels)
        async with self.conn.transaction():
            await self.conn.execute(queries.DELETE_OTHER_CHANNELS, names)
            await self.conn.execute(queries.INSERT_CHANNELS, names)
            await self.conn.execute(queries.INIT_CURSOR)
            cursor: int = await self.conn.fetchval(queries.CURSOR)
        return cursor

    async def active_alerts(self) -> list[asyncpg.Record]:
        return await self.conn.fetch(queries.ACTIVE_ALERTS)

    async def alert(self, alert_id: int) -> asyncpg.Record | None:
        return await self.conn.fetchrow(queries.ALERT, alert_id)

    async def previous_closes(self, symbols: Iterable[str]) -> dict[str, float | None]:
        rows = await self.conn.fetch(queries.PREVIOUS_CLOSES, list(symbols))
        return {r["symbol"]: r["previous_close"] for r in rows}

    async def last_prices(self, symbols: Iterable[str], upto: int) -> dict[str, Quote]:
        """Each symbol's last live price up to event id `upto` (none for a symbol without)."""
        rows = await self.conn.fetch(queries.LAST_PRICES, list(symbols), upto)
        return {r["symbol"]: (r["price"], r["ts"]) for r in rows}

    async def head(self) -> int:
        """The newest tick event id committed."""
        head: int = await self.conn.fetchval(queries.HEAD_EVENT_ID)
        return head

    async def ticks_after(
        self, cursor: int, limit: int, upto: int | None = None
    ) -> list[asyncpg.Record]:
        """Live ticks after event id `cursor` (up to `upto`), oldest first, `limit` at most."""
        return await self.conn.fetch(
            queries.TICKS_AFTER, cursor, limit, NO_LIMIT if upto is None else upto
        )

    async def commit(
        self, outcome: Outcome, cursor: int | None, browser: frozenset[int] | set[int]
    ) -> list[int]:
        """Store an outcome (and the new resume point) at once; the firings' ids, in order.

        Firings of alerts in `browser` (the alerts with the browser channel) are delivered by
        the `alert` notification sent on commit, so that delivery is recorded here too.
        """
        firings = outcome.firings
        async with self.conn.transaction():
            ids: list[int] = []
            if firings:
                rows = await self.conn.fetch(
                    queries.RECORD_FIRINGS,
                    [f.alert_id for f in firings],
                    [f.price for f in firings],
                    [f.line for f in firings],
                    [f.event_id for f in firings],
                    [f.ts for f in firings],
                )
                ids = sorted(r["id"] for r in rows)
            if outcome.armed:
                changed = list(outcome.armed)
                await self.conn.execute(
                    queries.UPDATE_ALERTS,
                    changed,
                    [outcome.armed[i] for i in changed],
                    [outcome.fired.get(i, 0) for i in changed],
                )
            shown = [i for i, f in zip(ids, firings, strict=True) if f.alert_id in browser]
            if shown:
                await record_deliveries(
                    self.conn, [(i, "browser", 1, "delivered", "streamed") for i in shown]
                )
            if cursor is not None:
                await self.conn.execute(queries.SET_CURSOR, cursor)
            if ids:
                await self.conn.execute(queries.NOTIFY_FIRINGS, ids)
        return ids


async def pending_deliveries(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    """Every (firing, channel) neither delivered nor given up on, with the attempts made."""
    return await conn.fetch(queries.PENDING_DELIVERIES)


async def record_deliveries(
    conn: asyncpg.Connection | asyncpg.Pool, attempts: list[tuple[int, str, int, str, str | None]]
) -> None:
    """Store delivery attempts: (firing id, channel, attempt, result, detail)."""
    await conn.execute(
        queries.RECORD_DELIVERIES,
        [a[0] for a in attempts],
        [a[1] for a in attempts],
        [a[2] for a in attempts],
        [a[3] for a in attempts],
        [a[4] for a in attempts],
    )
