"""Price alerts: created, listed and deleted here; evaluated and delivered by the alerts service."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, HTTPException, Path, Response, status

from services.api import queries
from services.api.auth import READERS, WriterDep
from services.api.bodies import SmallBodies
from services.api.deps import ConnDep, MetricsDep, SettingsDep
from services.api.routes.stocks import WRITE_RESPONSES
from services.common.contract import (
    Alert,
    AlertEvents,
    DeliveryEvent,
    FiredEvent,
    NewAlert,
    Problem,
)

log = logging.getLogger(__name__)

BROWSER = "browser"  # the built-in channel: the stream's `alert` events

router = APIRouter(
    prefix="/api/v1/alerts",
    tags=["alerts"],
    dependencies=READERS,
    route_class=SmallBodies,
    responses={
        429: {"model": Problem, "description": "Too many requests at once from this client"},
        503: {"model": Problem, "description": "Database unavailable"},
    },
)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such alert (or deleted)"},
    422: {"model": Problem, "description": "Malformed id"},
}
AlertId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The alert's id.")]


def _alert(row: asyncpg.Record) -> Alert:
    return Alert(**dict(row))


EVENT_KINDS: dict[str, type[FiredEvent] | type[DeliveryEvent]] = {
    "fired": FiredEvent,
    "delivery": DeliveryEvent,
}


def _unknown(alert_id: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"unknown alert {alert_id}")


@router.post(
    "",
    response_model=Alert,
    status_code=status.HTTP_201_CREATED,
    responses={
        **WRITE_RESPONSES,
        201: {"description": "Created: the alert, and its URL in Location"},
        409: {"model": Problem, "description": "As many alerts are in force as allowed"},
    },
)
async def create_alert(
    _writer: WriterDep,
    new: NewAlert,
    response: Response,
    conn: ConnDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> Alert:
    """An alert on a symbol's price: above or below a line, or a change in percent."""
    channels = list(dict.fromkeys(new.channels))
    named = [c for c in channels if c != BROWSER]
    async with conn.transaction():
        if named:
            known = {r["name"] for r in await conn.fetch(queries.CHANNELS_KNOWN, named)}
            unknown = [c for c in named if c not in known]
            if unknown:
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    f"body field 'channels': unknown channel(s) {', '.join(unknown)}: known are "
                    f"{BROWSER} and those in STOCKSTREAMER_ALERT_CHANNELS_FILE",
                )
        await conn.execute(queries.LOCK_ALERTS)
        if await conn.fetchval(queries.COUNT_ALERTS) >= settings.max_alerts:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"at most {settings.max_alerts} alerts may be in force "
                "(STOCKSTREAMER_MAX_ALERTS); delete one first",
            )
        row = await conn.fetchrow(
            queries.CREATE_ALERT,
            new.symbol.upper(),
            new.condition,
            new.value,
            channels,
            new.note,
        )
        assert row is not None  # noqa: S101 - an INSERT ... RETURNING returns its row
        await conn.execute(queries.NOTIFY, "alerts", str(row["id"]))
    metrics.alert_changes.labels("created").inc()
    log.info("alert created", extra={"alert": row["id"], "symbol": row["symbol"]})
    response.headers["Location"] = f"{router.prefix}/{row['id']}"
    return _alert(row)


@router.get("", response_model=list[Alert])
async def list_alerts(conn: ConnDep) -> list[Alert]:
    """Every alert in force, oldest first."""
    return [_alert(r) for r in await conn.fetch(queries.ALERTS)]


@router.get("/{alert_id}", response_model=Alert, responses=NOT_FOUND)
async def get_alert(alert_id: AlertId, conn: ConnDep) -> Alert:
    """One alert in force."""
    row = await conn.fetchrow(queries.ALERT, alert_id)
    if row is None:
        raise _unknown(alert_id)
    return _alert(row)


@router.delete(
    "/{alert_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**WRITE_RESPONSES, **NOT_FOUND},
)
async def delete_alert(
    _writer: WriterDep, alert_id: AlertId, conn: ConnDep, metrics: MetricsDep
) -> None:
    """Delete an alert: it fires no more; its firings and deliveries stay readable."""
    async with conn.transaction():
        if await conn.fetchval(queries.DELETE_ALERT, alert_id) is None:
            raise _unknown(alert_id)
        await conn.execute(queries.NOTIFY, "alerts", str(alert_id))
    metrics.alert_changes.labels("deleted").inc()
    log.info("alert deleted", extra={"alert": alert_id})


@router.get("/{alert_id}/events", response_model=AlertEvents, responses=NOT_FOUND)
async def alert_events(alert_id: AlertId, conn: ConnDep) -> AlertEvents:
    """Every firing of an alert (deleted ones too) and every attempt to deliver it, oldest first."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if await conn.fetchval(queries.ALERT_CREATED, alert_id) is None:
            raise _unknown(alert_id)
        rows = await conn.fetch(queries.ALERT_EVENTS, alert_id)
    # each row has both kinds' columns (the other kind's null): a model takes only its own
    events = [EVENT_KINDS[r["type"]].model_validate(dict(r)) for r in rows]
    return AlertEvents(alert_id=alert_id, events=events)
