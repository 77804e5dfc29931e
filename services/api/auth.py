"""Bearer tokens for writes (and reads, if so set): kept as digests, compared in constant time,
never logged."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from services.api.deps import ClientDep
from services.api.limits import TooMany

log = logging.getLogger(__name__)

FAILURE_WINDOW = 60.0  # seconds over which a client's failed attempts are counted


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Tokens:
    """The accepted tokens, as SHA-256 digests (the tokens themselves are not kept)."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [_digest(t) for t in tokens]

    @property
    def configured(self) -> bool:
        return bool(self._digests)

    def accepts(self, presented: str) -> bool:
        """Whether `presented` is one of the tokens; as long whichever matches, or none."""
        digest = _digest(presented)
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return matched


class Failures:
    """Failed attempts per client address over the last minute, to refuse guessing."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, deque[float]] = {}

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._seen.setdefault(client, deque())
        while times and times[0] <= now - FAILURE_WINDOW:
            times.popleft()
        if not times:
            del self._seen[client]
            return deque()
        return times

    def blocked_for(self, client: str) -> float:
        """Seconds until `client` may try again (0: it may now)."""
        now = time.monotonic()
        times = self._recent(client, now)
        if len(times) < self.limit:
            return 0.0
        return times[0] + FAILURE_WINDOW - now

    def add(self, client: str) -> None:
        self._seen.setdefault(client, deque()).append(time.monotonic())


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def require_writer(request: Request, client: ClientDep) -> None:
    """A write: 403 when no token is configured, 401 without the right one, 429 when guessing."""
    tokens: Tokens = request.app.state.tokens
    if not tokens.configured:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "writes are disabled: no API token is configured (STOCKSTREAMER_API_TOKENS_FILE)",
        )
    _check_token(request, client, tokens, "write")


async def require_reader(request: Request, client: ClientDep) -> None:
    """A read: open, unless STOCKSTREAMER_API_READ_TOKEN_REQUIRED asks for a token as writes do."""
    if request.app.state.settings.api_read_token_required:
        _check_token(request, client, request.app.state.tokens, "read")


def _check_token(request: Request, client: str, tokens: Tokens, kind: str) -> None:
    """Returns when the request presents one of `tokens`: else 401, or 429 when guessing."""
    failures: Failures = request.app.state.auth_failures
    metrics = request.app.state.metrics
    wait = failures.blocked_for(client)
    if wait > 0:
        metrics.auth_failures.labels("throttled").inc()
        raise TooMany("too many failed attempts, try again later", retry_after=max(1, round(wait)))
    presented = _bearer(request)
    if presented is not None and tokens.accepts(presented):
        return
    reason = "missing" if presented is None else "wrong"
    failures.add(client)
    metrics.auth_failures.labels(reason).inc()
    log.warning("token refused", extra={"access": kind, "reason": reason, "client": client})
    challenge = 'Bearer realm="stockstreamer"'
    if presented is not None:
        challenge += ', error="invalid_token"'
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "a valid token is needed: Authorization: Bearer <token>",
        headers={"WWW-Authenticate": challenge},
    )


WriterDep = Annotated[None, Depends(require_writer)]
READERS = [Depends(require_reader)]  # every read router's dependencies
