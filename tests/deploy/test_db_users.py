"""db/users.sql on a real PostgreSQL: each login does its job and can gain nothing more."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from services.common.db import SET_ROLE
from services.common.migrations import migrate
from services.runner.embedded_db import EmbeddedPostgres, free_port
from services.secrets import scram_verifier
from tests.deploy.db import (
    ALSO_GRANTED,
    LOGINS,
    PASSWORDS,
    apply_logins,
    apply_users,
    as_user,
    users_sql,
)
from tests.utils.api import Market

# Quotes, a backslash and SQL: psql must quote the value, not splice it.
ODD_RETENTION = '1 day\'; DROP TABLE ticks; -- \\ "odd"'

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
    "SET ROLE stockstreamer_alerter",
    "SET SESSION AUTHORIZATION postgres",
    "SELECT set_config('role', 'stockstreamer_writer', false)",
    "ALTER ROLE stockstreamer_api SUPERUSER",
    "GRANT stockstreamer_writer TO stockstreamer_api",
]


@pytest.fixture
def verifiers(database_url: str) -> dict[str, str]:
    """The logins made by db/users.sql; their retention ten years, for the tests' fixed dates."""
    return apply_logins(database_url, retention="3650d", retention_minute="3650d")


@pytest.fixture
def users(verifiers: dict[str, str], database_url: str) -> str:
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


# The watchlist and alerts: what the API's editor role writes, and what only others may.
ADD_SYMBOL = "INSERT INTO watchlist (symbol, origin) VALUES ('AMD', 'api')"
ADD_ALERT = (
    "INSERT INTO alerts (symbol, condition, value, channels)"
    " VALUES ('AAPL', 'above', 200, '{browser}')"
)
API_WRITES = [
    ADD_SYMBOL,
    "UPDATE watchlist SET state = 'pending' WHERE symbol = 'AMD'",
    "DELETE FROM watchlist WHERE symbol = 'AMD'",
    ADD_ALERT,
    "UPDATE alerts SET deleted_at = now()",
]
ALERTER_WRITES = [
    "UPDATE alerts SET armed = false, fired = fired + 1",
    "INSERT INTO alert_channels (name) VALUES ('phone')",
    "DELETE FROM alert_channels",
    "INSERT INTO alert_cursor (last_event_id) VALUES (0)",
]


async def test_api_reads(api: asyncpg.Connection) -> None:
    assert await api.fetchval("SELECT current_user") == "stockstreamer_editor"
    assert await api.fetchval("SELECT session_user") == "stockstreamer_api"
    assert await api.fetchval("SELECT count(*) FROM ticks") == 0
    await api.execute("LISTEN prices")


async def test_api_writes_the_watchlist_and_alerts_and_no_more(api: asyncpg.Connection) -> None:
    for statement in API_WRITES:
        await api.execute(statement)
    await api.execute("LISTEN watchlist")
    for statement in [
        *ALERTER_WRITES,
        "UPDATE alerts SET value = 1",
        "DELETE FROM alerts",
        "INSERT INTO alert_firings (alert_id, price, line, tick_ts)"
        " SELECT id, 1, 1, now() FROM alerts",
    ]:
        await refused(api, statement)


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
        market = Market(conn, keep=None)  # the owner set the retention: the writer cannot
        await market.stocks("AAPL")
        await market.series("AAPL", 3)
        assert await conn.fetchval("SELECT count(*) FROM ticks") == 3
        for statement in NOT_EVEN_WRITERS + ESCALATIONS[1:3]:
            await refused(conn, statement)
        await conn.execute("RESET ROLE")
        await refused(conn, "CREATE TABLE public.planted (id int)")
    finally:
        await conn.close()


@pytest.fixture
async def alerts(users: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await login(users, "alerts")
    try:
        yield conn
    finally:
        await conn.close()


async def test_alerts_service_reads_ticks_and_writes_alert_state_alone(
    users: str, alerts: asyncpg.Connection
) -> None:
    owner = await asyncpg.connect(users)
    try:
        market = Market(owner)
        await market.stocks("AAPL")
        await market.series("AAPL", 3)
        await owner.execute(ADD_ALERT)
    finally:
        await owner.close()
    assert await alerts.fetchval("SELECT current_user") == "stockstreamer_alerter"
    assert await alerts.fetchval("SELECT session_user") == "stockstreamer_alerts"
    assert await alerts.fetchval("SELECT count(*) FROM ticks") == 3
    await alerts.execute("LISTEN prices")
    await alerts.fetch("SELECT * FROM stocks, watchlist, feed LIMIT 1")
    for statement in ALERTER_WRITES:
        await alerts.execute(statement)
    firing = await alerts.fetchval(
        "INSERT INTO alert_firings (alert_id, price, line, tick_ts)"
        " SELECT id, 201, 200, now() FROM alerts RETURNING id"
    )
    await alerts.execute(
        "INSERT INTO alert_deliveries (firing_id, channel, attempt, result)"
        " VALUES ($1, 'browser', 1, 'delivered')",
        firing,
    )
    await alerts.execute("UPDATE alert_cursor SET last_event_id = 3")
    # neither ticks nor the watchlist, nor what an alert is: the API's and the fetcher's
    for statement in [
        *WRITES,
        *API_WRITES,
        "UPDATE alerts SET value = 1",
        "UPDATE alert_firings SET price = 0",
        "DELETE FROM alert_deliveries",
    ]:
        await refused(alerts, statement)
    for statement in ESCALATIONS:
        if "alerter" not in statement:  # its own role
            await refused(alerts, statement)


async def test_fetcher_sets_the_watchlist_state_but_writes_no_alert(users: str) -> None:
    conn = await login(users, "fetcher")
    try:
        await conn.execute(ADD_SYMBOL.replace("'api'", "'config'"))
        await conn.execute("UPDATE watchlist SET state = 'live' WHERE symbol = 'AMD'")
        await conn.execute("DELETE FROM watchlist WHERE symbol = 'AMD'")
        for statement in [ADD_ALERT, *ALERTER_WRITES]:
            await refused(conn, statement)
    finally:
        await conn.close()


async def test_logins_hold_only_their_group_role(users: str, verifiers: dict[str, str]) -> None:
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
            assert row["rolpassword"] == verifiers[f"{service_of(user)}_verifier"], "as sent"
            groups = await conn.fetch(
                "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
                " JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1",
                user,
            )
            assert {g["rolname"] for g in groups} == {role} | ALSO_GRANTED.get(user, set())
    finally:
        await conn.close()


async def test_running_again_changes_the_passwords(users: str) -> None:
    conn = await asyncpg.connect(users)
    query = "SELECT rolpassword FROM pg_authid WHERE rolname = 'stockstreamer_api'"
    try:
        before = await conn.fetchval(query)
        again = apply_logins(users, {**PASSWORDS, "api": "another"})
        after = await conn.fetchval(query)
        assert before != after == again["api_verifier"]
    finally:
        await conn.close()


def service_of(user: str) -> str:
    return user.removeprefix("stockstreamer_")


@pytest.mark.parametrize(
    "value",
    [
        "fetcher-secret",  # the password itself
        "md5" + "0" * 32,
        # looks like a verifier, but its keys are not 32 bytes: PostgreSQL would hash it as a
        # password and store that instead
        "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy",
        scram_verifier("fetcher-secret") + "\n-- and more",
    ],
)
async def test_anything_but_a_verifier_is_refused(users: str, value: str) -> None:
    conn = await asyncpg.connect(users)
    query = "SELECT rolpassword FROM pg_authid WHERE rolname = 'stockstreamer_fetcher'"
    try:
        before = await conn.fetchval(query)
        result = users_sql(
            users, fetcher_verifier=value, api_verifier=scram_verifier(PASSWORDS["api"])
        )
        assert result.returncode != 0
        assert "fetcher_verifier is not a SCRAM-SHA-256 verifier" in result.stderr
        assert value not in result.stdout + result.stderr, "a refused value is never shown"
        assert await conn.fetchval(query) == before
    finally:
        await conn.close()


async def test_passwords_in_clear_are_refused(users: str) -> None:
    result = users_sql(users, fetcher_password="fetcher-secret", api_password="api-secret")
    assert result.returncode != 0
    assert "takes SCRAM verifiers, not passwords" in result.stderr
    assert "fetcher-secret" not in result.stdout + result.stderr


async def test_a_missing_verifier_is_named(users: str) -> None:
    result = users_sql(users, fetcher_verifier=scram_verifier("fetcher-secret"))
    assert result.returncode != 0
    assert "api_verifier is missing" in result.stderr
    given = {f"{name}_verifier": scram_verifier(pw) for name, pw in PASSWORDS.items()}
    del given["alerts_verifier"]
    result = users_sql(users, **given)
    assert result.returncode != 0
    assert "alerts_verifier is missing" in result.stderr


async def test_an_odd_retention_is_quoted_and_refused(users: str) -> None:
    result = users_sql(
        users,
        retention=ODD_RETENTION,
        **{f"{name}_verifier": scram_verifier(pw) for name, pw in PASSWORDS.items()},
    )
    assert result.returncode != 0
    assert "retention: " in result.stderr and "is not a duration" in result.stderr
    conn = await asyncpg.connect(users)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ticks") == 0  # still there
        keep = await conn.fetchval("SELECT keep::text FROM partition_policy WHERE parent = 'ticks'")
        assert keep == "3650 days"
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
        await conn.execute(
            "REVOKE rds_iam FROM stockstreamer_fetcher, stockstreamer_api, stockstreamer_alerts"
        )
        if created:
            await conn.execute("DROP ROLE rds_iam")
        await conn.close()


@dataclass
class Server:
    """A server of the tests' own: password logins only, every statement logged."""

    pg: EmbeddedPostgres

    @property
    def url(self) -> str:
        return self.pg.url

    def login(self, service: str, password: str | None = None) -> str:
        user = f"stockstreamer_{service}"
        return as_user(self.url, user, password or PASSWORDS[service])


@contextmanager
def small_server(max_connections: int) -> Iterator[Server]:
    home = Path(tempfile.mkdtemp(prefix="stockstreamer-users-"))
    pg = EmbeddedPostgres(
        home / "data",
        port=free_port(),
        durable=False,
        password="owner-secret",
        settings={"max_connections": str(max_connections), "log_statement": "'all'"},
    )
    pg.start()
    try:
        asyncio.run(pg.create_database())
        migrate(pg.url)
        yield Server(pg)
    finally:
        pg.destroy()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """max_connections 20: a tenth of what the API's old fixed limit alone allowed."""
    with small_server(20) as small:
        yield small


async def test_passwords_reach_the_server_only_as_verifiers(server: Server) -> None:
    verifiers = apply_logins(server.url)
    log = server.pg.log_file.read_text()
    assert "ALTER ROLE" in log, "the server logs every statement"
    for password in PASSWORDS.values():
        assert password not in log
    for service, password in PASSWORDS.items():
        conn = await asyncpg.connect(server.login(service))  # SCRAM with the password
        try:
            stored = await conn.fetchval("SELECT current_user")
            assert stored == f"stockstreamer_{service}"
        finally:
            await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(server.login(service, "not-" + password))
    owner = await asyncpg.connect(server.url)
    try:
        stored = await owner.fetchval(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'stockstreamer_monitor'"
        )
        assert stored == verifiers["monitor_verifier"]
    finally:
        await owner.close()


async def test_the_fetcher_connects_whatever_the_api_holds(server: Server) -> None:
    """Every API replica together cannot take the fetcher's, the alerts service's or the
    monitor's slots."""
    apply_logins(server.url)
    async with AsyncExitStack() as stack:
        held = 0
        with pytest.raises(asyncpg.TooManyConnectionsError) as refused:
            for _ in range(100):  # as many as the API login gets, and one more
                conn = await asyncpg.connect(server.login("api"))
                stack.push_async_callback(conn.close)
                held += 1
        assert "too many connections for role" in str(refused.value)
        assert held >= 2
        for service in ("fetcher", "alerts", "monitor"):
            conn = await asyncpg.connect(server.login(service))
            stack.push_async_callback(conn.close)
        # and the superuser's one-shots still have their headroom
        for _ in range(4):
            conn = await asyncpg.connect(server.url)
            stack.push_async_callback(conn.close)


def test_a_server_too_small_for_the_logins_is_named() -> None:
    with small_server(14) as tiny:
        result = users_sql(
            tiny.url, **{f"{name}_verifier": scram_verifier(pw) for name, pw in PASSWORDS.items()}
        )
        assert result.returncode != 0
        assert "max_connections = 14 leaves the API login" in result.stderr
        assert "raise max_connections to at least 18" in result.stderr
