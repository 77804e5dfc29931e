"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse

from services.api import queries
from services.api.deps import MetricsDep, PoolDep
from services.api.metrics import METRICS_CONTENT_TYPE
from services.common.contract import Health

router = APIRouter(tags=["health"])

READY_TIMEOUT = 2.0


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "Database unreachable"}},
)
async def readyz(pool: PoolDep) -> Health | JSONResponse:
    """The database answers."""
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            async with pool.acquire() as conn:
                await conn.fetchval(queries.SELECT_ONE)
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        return JSONResponse({"status": "database unreachable"}, status.HTTP_503_SERVICE_UNAVAILABLE)
    return Health(status="ready")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics of the API: with several workers, added up over all of them."""
    return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)
