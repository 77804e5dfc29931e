"""Request bodies of writes: small, and read only as far as their limit (beyond: 413)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response, status
from fastapi.routing import APIRoute

MAX_BODY = 4096  # bytes: a write's JSON is a few hundred


def too_large() -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"body: larger than {MAX_BODY} bytes")


class SmallBodyRequest(Request):
    """A request whose body is refused once it exceeds MAX_BODY, before more of it is read."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY:
                raise too_large()
            chunks: list[bytes] = []
            size = 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > MAX_BODY:  # a chunked body says no length up front
                    raise too_large()
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body


class SmallBodies(APIRoute):
    """A route whose request body is a SmallBodyRequest's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def small(request: Request) -> Response:
            return await handler(SmallBodyRequest(request.scope, request.receive))

        return small
