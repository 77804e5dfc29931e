"""SCRAM verifiers made client-side are the ones PostgreSQL makes itself."""

from __future__ import annotations

import base64
import re

import asyncpg
import pytest

from services.secrets.scram import scram_verifier, verifies


async def test_a_verifier_is_the_one_postgresql_makes_from_the_same_salt(
    db: asyncpg.Connection,
) -> None:
    await db.execute("SET password_encryption = 'scram-sha-256'")
    await db.execute("CREATE ROLE scram_probe LOGIN PASSWORD 'correct horse battery staple'")
    stored = await db.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_probe'")
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$.+", stored)
    assert match, stored
    ours = scram_verifier("correct horse battery staple", base64.b64decode(match[2]), int(match[1]))
    assert ours == stored
    assert verifies(stored, "correct horse battery staple")
    assert not verifies(stored, "correct horse battery stapler")


async def test_postgresql_keeps_a_verifier_as_given(db: asyncpg.Connection) -> None:
    verifier = scram_verifier("s3cret")
    # A verifier, like a password, cannot be a parameter of ALTER ROLE: it is a checked literal.
    literal = await db.fetchval("SELECT quote_literal($1)", verifier)
    await db.execute(f"CREATE ROLE scram_kept LOGIN PASSWORD {literal}")
    stored = await db.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_kept'")
    assert stored == verifier


def test_each_verifier_has_its_own_salt_and_foreign_text_is_no_verifier() -> None:
    assert scram_verifier("x") != scram_verifier("x")
    assert not verifies("md5abcdef", "x")
    with pytest.raises(ValueError, match="printable ASCII"):
        scram_verifier("pässword")
