"""Error responses: clear 422s naming the parameter, and 503 (never 500) for database outages."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.common.db import OUTAGE_ERRORS

log = logging.getLogger(__name__)

# Where a parameter lives, as said in a message.
_PLACES = {"path": "path parameter", "query": "query parameter", "header": "header"}


def describe(error: dict[str, Any]) -> str:
    """`query parameter 'max_points': Input should be ...` from one pydantic error; a body's
    field is named by its path (`body field 'channels[0]'`)."""
    loc = [str(part) for part in error.get("loc", ())]
    message = str(error.get("msg", "invalid"))
    if loc[:1] == ["body"]:
        if error.get("type") == "json_invalid" or len(loc) == 1:
            return f"body: {message}"
        parts = error["loc"][1:]
        name = str(parts[0]) + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts[1:]
        )
        return f"body field '{name}': {message}"
    place = _PLACES.get(loc[0], loc[0]) if loc else "request"
    name = loc[-1] if len(loc) > 1 else ""
    return f"{place} '{name}': {message}" if name else f"{place}: {message}"


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for this type
    detail = "; ".join(describe(e) for e in exc.errors()) or "invalid request"
    return JSONResponse({"detail": detail}, status.HTTP_422_UNPROCESSABLE_CONTENT)


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning(
        "database unavailable",
        extra={"path": request.url.path, "error": str(exc) or type(exc).__name__},
    )
    return JSONResponse(
        {"detail": "database unavailable, try again shortly"},
        status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "1"},
    )


async def query_timeout(request: Request, exc: Exception) -> JSONResponse:
    log.warning("query cancelled by statement_timeout", extra={"path": request.url.path})
    return JSONResponse(
        {"detail": "the query took too long and was cancelled; try a shorter window or later"},
        status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "5"},
    )


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(RequestValidationError, validation_error)
    # Connection failures, pool timeouts and server errors all mean "not now", not "your fault".
    outages: tuple[type[BaseException], ...] = (*OUTAGE_ERRORS, asyncpg.PostgresError)
    for outage in outages:
        if issubclass(outage, Exception):
            app.add_exception_handler(outage, database_unavailable)
    app.add_exception_handler(asyncpg.QueryCanceledError, query_timeout)
