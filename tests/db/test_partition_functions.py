"""The partition functions, attacked by the writer's login: they run as their owner, so they must
trust nothing the caller can put in their way, and only the owner decides what they drop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.common.db import SET_ROLE
from tests.deploy.db import LOGINS, apply_logins, as_user

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=5)  # within the default retention (30 days): never due
# Whatever a writer might call to drop data: the retention function as it stands, and the forms
# that used to take the retention from the caller.
RETENTION_CALLS = [
    "SELECT stockstreamer_apply_retention()",
    "SELECT stockstreamer_apply_retention('-10 days', '-10 days')",
    "SELECT stockstreamer_apply_retention('1 day', '1 day')",
]
POLICY = "SELECT parent, step, keep FROM partition_policy ORDER BY parent"
# How a call is refused when it is (an old signature gone, no right to it).
REFUSED = (asyncpg.UndefinedFunctionError, asyncpg.InsufficientPrivilegeError)


@pytest.fixture(params=["temp revoked", "temp granted"])
async def owner(
    request: pytest.FixtureRequest, database_url: str
) -> AsyncIterator[asyncpg.Connection]:
    """The owner's connection to a database with the logins; with TEMP granted back to everyone
    in the second case, so that the functions must hold without db/users.sql's revoke."""
    apply_logins(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        if request.param == "temp granted":
            await conn.execute(
                "DO $$ BEGIN EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC',"
                " current_database()); END $$"
            )
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def writer(owner: asyncpg.Connection, database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """The fetcher's login, switched to its role as the fetcher does, with partitions to attack:
    today's and those of five days ago (both kept by the retention in force)."""
    user, role = LOGINS["fetcher"]
    conn = await asyncpg.connect(as_user(database_url, user))
    try:
        await conn.execute(SET_ROLE, role)
        for parent in ("ticks", "bars_10s"):
            for at in (NOW, OLD):
                await conn.fetchval("SELECT stockstreamer_ensure_partition($1, $2)", parent, at)
        yield conn
    finally:
        await conn.close()


async def tables(conn: asyncpg.Connection) -> set[str]:
    """Every table in the application's schema, partitions included."""
    rows = await conn.fetch(
        "SELECT relname FROM pg_catalog.pg_class"
        " WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')"
    )
    return {r["relname"] for r in rows}


async def temp_allowed(conn: asyncpg.Connection, statement: str) -> bool:
    """Run `statement` (creating a temporary object); False when TEMP is refused."""
    try:
        await conn.execute(statement)
    except asyncpg.InsufficientPrivilegeError:
        return False
    return True


async def attempt(conn: asyncpg.Connection, statement: str) -> str:
    """What became of `statement`: `done`, or the name of the error that refused it."""
    try:
        await conn.execute(statement)
    except asyncpg.PostgresError as exc:
        return type(exc).__name__
    return "done"


def expect_temp(owner_fixture: str, allowed: bool) -> None:
    assert allowed == (owner_fixture == "temp granted"), "TEMP must be revoked by db/users.sql"


async def test_a_temporary_partition_policy_is_ignored(
    request: pytest.FixtureRequest, owner: asyncpg.Connection, writer: asyncpg.Connection
) -> None:
    before = await tables(owner)
    assert {f"ticks_p{NOW:%Y%m%d}", f"ticks_p{OLD:%Y%m%d}"} <= before
    allowed = await temp_allowed(
        writer,
        "CREATE TEMP TABLE partition_policy"
        " (parent text, step interval, keep interval, horizon timestamptz)",
    )
    expect_temp(request.node.callspec.params["owner"], allowed)
    if allowed:
        await writer.execute(
            "INSERT INTO partition_policy VALUES"
            " ('ticks', '1 day', '1 day', '-infinity'), ('stocks', '1 day', '1 day', '-infinity')"
        )

    results = {call: await attempt(writer, call) for call in RETENTION_CALLS}

    assert await tables(owner) == before, results
    assert results[RETENTION_CALLS[0]] == "done"
    assert all(r in {e.__name__ for e in REFUSED} for r in list(results.values())[1:]), results
    # a table the policy does not name gets no partition either
    with pytest.raises(asyncpg.RaiseError, match="not a time-partitioned table"):
        await writer.fetchval("SELECT stockstreamer_ensure_partition('stocks', now())")
    assert await tables(owner) == before


async def test_temporary_catalog_views_are_ignored(
    request: pytest.FixtureRequest, owner: asyncpg.Connection, writer: asyncpg.Connection
) -> None:
    """Views named pg_class and pg_inherits that present the daily bars (kept forever) as an
    expired partition of ticks: the function must read the real catalogs."""
    before = await tables(owner)
    allowed = await temp_allowed(
        writer,
        "CREATE TEMP VIEW pg_inherits AS"
        " SELECT v.oid AS inhrelid, 'public.ticks'::regclass::oid AS inhparent, 1 AS inhseqno"
        " FROM pg_catalog.pg_class v WHERE v.relname = 'bars_1d'",
    )
    expect_temp(request.node.callspec.params["owner"], allowed)
    if allowed:
        await writer.execute(
            "CREATE TEMP VIEW pg_class AS"
            " SELECT v.oid, v.relnamespace, v.relname, d.relpartbound"
            " FROM pg_catalog.pg_class v, pg_catalog.pg_class d"
            " WHERE v.relname = 'bars_1d' AND d.relname = (SELECT min(relname)"
            "  FROM pg_catalog.pg_class WHERE relname LIKE 'ticks\\_p%')"  # five days old
        )

    results = {call: await attempt(writer, call) for call in RETENTION_CALLS}

    after = await tables(owner)
    assert "bars_1d" in after, results
    assert after == before, results


async def test_the_writer_cannot_shorten_the_retention(
    owner: asyncpg.Connection, writer: asyncpg.Connection
) -> None:
    before = await tables(owner)
    policy = await owner.fetch(POLICY)
    shorten = [
        *RETENTION_CALLS[1:],
        "UPDATE partition_policy SET keep = '1 day'",
        "CALL stockstreamer_set_retention('1 day', '1 day')",
        "DELETE FROM partition_policy",
    ]
    results = {statement: await attempt(writer, statement) for statement in shorten}
    assert all(r in {e.__name__ for e in REFUSED} for r in results.values()), results

    assert await writer.fetch("SELECT stockstreamer_apply_retention()") == []
    assert await tables(owner) == before
    assert await owner.fetch(POLICY) == policy
