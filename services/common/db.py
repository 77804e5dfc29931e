"""asyncpg pools and connections with the service's role and a redacted URL for logs."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)

# set_config() takes its value as a parameter, unlike SET ROLE, so no SQL is built from strings.
SET_ROLE = "SELECT set_config('role', $1, false)"


def redact_url(url: str) -> str:
    """The database URL with any password replaced, safe to log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _init_for(role: str | None) -> Any:
    async def init(conn: asyncpg.Connection) -> None:
        if role:
            await conn.execute(SET_ROLE, role)

    return init


async def connect(url: str, role: str | None = None, timeout: float = 5.0) -> asyncpg.Connection:
    """One connection, switched to `role` when given."""
    conn = await asyncpg.connect(url, timeout=timeout)
    await _init_for(role)(conn)
    return conn


async def create_pool(
    url: str,
    role: str | None = None,
    min_size: int = 1,
    max_size: int = 10,
    statement_timeout: float | None = None,
) -> asyncpg.Pool:
    """A pool whose connections all act as `role` (e.g. the read-only role for the API)."""
    settings = {}
    if statement_timeout is not None:
        # the server cancels a runaway query itself, even if this client has gone away
        settings["statement_timeout"] = str(round(statement_timeout * 1000))
    return await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, init=_init_for(role), timeout=5.0,
        server_settings=settings,
    )  # fmt: skip
