"""PostgreSQL's SCRAM-SHA-256 password verifier (RFC 5802, RFC 7677), made client-side.

`ALTER ROLE … PASSWORD '<verifier>'` stores a verifier as it is, so the password itself never
reaches the server, its logs or `pg_stat_statements`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)
SALT_BYTES = 16
_VERIFIER = re.compile(
    r"SCRAM-SHA-256\$(?P<iterations>\d+):(?P<salt>[A-Za-z0-9+/=]+)"
    r"\$(?P<stored>[A-Za-z0-9+/=]+):(?P<server>[A-Za-z0-9+/=]+)"
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    if not password.isascii() or not password.isprintable():
        # PostgreSQL normalises other passwords with SASLprep first, which this does not do.
        raise ValueError("database passwords must be printable ASCII")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return stored_key, server_key


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The verifier PostgreSQL would store for `password` (a fresh random salt by default)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    stored_key, server_key = _keys(password, salt, iterations)
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def verifies(verifier: str, password: str) -> bool:
    """Whether `verifier` was made from `password`."""
    match = _VERIFIER.fullmatch(verifier.strip())
    if match is None:
        return False
    salt = base64.b64decode(match["salt"])
    stored_key, server_key = _keys(password, salt, int(match["iterations"]))
    return hmac.compare_digest(_b64(stored_key), match["stored"]) and hmac.compare_digest(
        _b64(server_key), match["server"]
    )
