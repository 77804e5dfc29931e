"""db/users.sql on a real PostgreSQL: each login does its job and can gain nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.common.db import SET_ROLE
from tests.deploy.db import LOGINS, apply_users, as_user
from tests.utils.api import Market

# Quotes and a backslash: psql must quote the value, not splice it.
ODD_PASSWORD = 'it\'s "odd" \\ 1'

WRITES = [
    "INSERT INTO stocks (symbol) VALUES ('ZZZ')",
    "UPDATE stocks SET name = 'x'",
    "DELETE FROM ticks",
    "TRUNCATE ticks",
    "SELECT nextval('tick_event_id_seq')",
    "CREATE TABLE public.planted (id int)",
    "CREATE SCHEMA planted",
    "ALTER TABLE ticks ADD COLUMN planted int",
    "DROP TABLE ticks",
    "COMMENT ON TABLE stocks IS 'planted'",
]
# What even the writer may not do: the schema belongs to the superuser, rows are never deleted.
NOT_EVEN_WRITERS = [w for w in WRITES if not w.startswith(("INSERT", "UPDATE", "SELECT nextval"))]
ESCALATIONS = [
    "SET ROLE stockstreamer_writer",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "SELECT set_config('role', 'stockstreamer_writer', false)",
    "ALTER ROLE stockstreamer_api SUPERUSER",
    "GRANT stockstreamer_writer TO stockstreamer_api",
]


@pytest.fixture
async def users(database_url: str) -> str:
    apply_users(database_url, fetcher_password="fetcher-secret", api_password=ODD_PASSWORD)
    return database_url


async def login(url: str, service: str) -> asyncpg.Connection:
    """A connection as the service makes it: its login user, switched to its group role."""
    user, role = LOGINS[service]
    conn = await asyncpg.connect(as_user(url, user))
    await conn.execute(SET_ROLE, role)
    return conn


@pytest.fixture
async def api(users: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await login(users, "api")
    try:
        yield conn
    finally:
        await conn.close()


async def refused(conn: asyncpg.Connection, statement: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute(statement)


async def test_api_reads(api: asyncpg.Connection) -> None:
    assert await api.fetchval("SELECT current_user") == "stockstreamer_reader"
    assert await api.fetchval("SELECT session_user") == "stockstreamer_api"
    assert await api.fetchval("SELECT count(*) FROM ticks") == 0
    await api.execute("LISTEN prices")


@pytest.mark.parametrize("statement", WRITES)
async def test_api_cannot_write_under_its_role(api: asyncpg.Connection, statement: str) -> None:
    await refused(api, statement)


@pytest.mark.parametrize("statement", WRITES)
async def test_api_cannot_write_after_reset_role(api: asyncpg.Connection, statement: str) -> None:
    await api.execute("RESET ROLE")
    assert await api.fetchval("SELECT current_user") == "stockstreamer_api"
    await refused(api, statement)


@pytest.mark.parametrize("statement", ESCALATIONS)
async def test_api_cannot_switch_to_a_stronger_role(
    api: asyncpg.Connection, statement: str
) -> None:
    await refused(api, statement)
    await refused(api, WRITES[0])


async def test_fetcher_writes_and_no_more(users: str) -> None:
    conn = await login(users, "fetcher")
    try:
        market = Market(conn)
        await market.stocks("AAPL")
        await market.series("AAPL", 3)
        assert await conn.fetchval("SELECT count(*) FROM ticks") == 3
        for statement in NOT_EVEN_WRITERS + ESCALATIONS[1:3]:
            await refused(conn, statement)
        await conn.execute("RESET ROLE")
        await refused(conn, "CREATE TABLE public.planted (id int)")
    finally:
        await conn.close()


async def test_logins_hold_only_their_group_role(users: str) -> None:
    conn = await asyncpg.connect(users)
    try:
        for user, role in LOGINS.values():
            row = await conn.fetchrow(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls,"
                " rolcanlogin, rolpassword FROM pg_authid WHERE rolname = $1",
                user,
            )
            assert row is not None
            assert not any(row[k] for k in ("rolsuper", "rolcreatedb", "rolcreaterole"))
            assert not row["rolreplication"] and not row["rolbypassrls"] and row["rolcanlogin"]
            assert row["rolpassword"].startswith("SCRAM-SHA-256$"), "stored hashed"
            groups = await conn.fetch(
                "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
                " JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1",
                user,
            )
            assert [g["rolname"] for g in groups] == [role]
    finally:
        await conn.close()


async def test_running_again_changes_the_passwords(users: str) -> None:
    conn = await asyncpg.connect(users)
    query = "SELECT rolpassword FROM pg_authid WHERE rolname = 'stockstreamer_api'"
    try:
        before = await conn.fetchval(query)
        apply_users(users, fetcher_password="fetcher-secret", api_password="another")
        after = await conn.fetchval(query)
        assert before != after and "another" not in after
    finally:
        await conn.close()


async def test_iam_logins_on_rds(users: str) -> None:
    """With iam=on the logins join RDS's rds_iam role (a stand-in role here) and get no password."""
    conn = await asyncpg.connect(users)
    created = not await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = 'rds_iam'")
    try:
        if created:
            await conn.execute("CREATE ROLE rds_iam NOLOGIN")
        apply_users(users, iam="on")
        members = await conn.fetch(
            "SELECT u.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
            " JOIN pg_roles u ON u.oid = m.member WHERE g.rolname = 'rds_iam'"
        )
        assert {m["rolname"] for m in members} == {user for user, _ in LOGINS.values()}
    finally:
        await conn.execute("REVOKE rds_iam FROM stockstreamer_fetcher, stockstreamer_api")
        if created:
            await conn.execute("DROP ROLE rds_iam")
        await conn.close()
