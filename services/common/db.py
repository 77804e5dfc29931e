"""asyncpg pools and connections with the service's role and a redacted URL for logs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)

# "The database is not reachable right now": wait and try again; never the data's fault.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InvalidAuthorizationSpecificationError,  # e.g. credentials rotated under us
    # the connection's protocol state is broken after the server vanished mid-statement
    asyncpg.InternalClientError,
)

UrlSource = str | Callable[[], str]
"""A database URL, or how to get the current one (credentials in a file may be rotated)."""


def current_url(source: UrlSource) -> str:
    return source if isinstance(source, str) else source()


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


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """No reset query on release: a round trip per request that undoes nothing we do.

    asyncpg's default (`UNLISTEN *; RESET ALL; CLOSE ALL; pg_advisory_unlock_all()`) undoes
    session state, and pooled connections keep none: settings come with the connection, the role
    from `init` (which RESET ALL keeps anyway), no cursor outlives its transaction, and LISTEN
    and advisory locks are never used on them. asyncpg still rolls back an open transaction.
    """


async def connect(
    url: UrlSource, role: str | None = None, timeout: float = 5.0
) -> asyncpg.Connection:
    """One connection, switched to `role` when given."""
    conn = await asyncpg.connect(current_url(url), timeout=timeout)
    try:
        await _init_for(role)(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn


Notified = Callable[[Any, int, str, object], None]
"""asyncpg's notification callback: connection, sender's pid, channel, payload."""


@dataclass(frozen=True, slots=True)
class Listening:
    """A connection LISTENing on its channels, and the event set when it is lost."""

    conn: asyncpg.Connection
    lost: asyncio.Event


@asynccontextmanager
async def listening(
    url: UrlSource,
    role: str | None,
    channels: Sequence[str],
    notified: Notified,
    wake: asyncio.Event,
) -> AsyncIterator[Listening]:
    """One connection that LISTENs on `channels`; a lost connection sets `lost` and `wake`, so a
    loop waiting for notifications notices at once. Terminated on the way out."""
    conn = await connect(url, role)
    lost = asyncio.Event()

    def on_lost(_conn: object) -> None:
        lost.set()
        wake.set()

    conn.add_termination_listener(on_lost)
    try:
        for channel in channels:
            await conn.add_listener(channel, notified)
        yield Listening(conn, lost)
    finally:
        conn.terminate()


async def create_pool(
    url: UrlSource,
    role: str | None = None,
    min_size: int = 1,
    max_size: int = 10,
    statement_timeout: float | None = None,
) -> asyncpg.Pool:
    """A pool whose connections all act as `role` (e.g. the read-only role for the API)."""
    # Room to sort and group a history window in memory (a few MB per query) instead of on disk.
    settings = {"work_mem": "32MB"}
    if statement_timeout is not None:
        # the server cancels a runaway query itself, even if this client has gone away
        settings["statement_timeout"] = str(round(statement_timeout * 1000))

    async def new_connection(*_dsn: Any, **kwargs: Any) -> asyncpg.Connection:
        # each new connection reads the URL afresh: rotated credentials work without a restart
        return await asyncpg.connect(current_url(url), **kwargs)

    return await asyncpg.create_pool(
        min_size=min_size,
        max_size=max_size,
        init=_init_for(role),
        reset=_keep_session,
        timeout=5.0,
        server_settings=settings,
        connect=new_connection,
    )
