"""GET /export.csv: what a page shows, as the API's CSV file, relayed to the browser as it comes."""

from __future__ import annotations

import logging
import time
from urllib.parse import urlencode

import httpx
from tornado.iostream import StreamClosedError
from tornado.web import RequestHandler

from services.common.bars import LEVELS
from services.dashboard.runtime import Runtime
from services.dashboard.shaping import WINDOWS

log = logging.getLogger(__name__)

KINDS = ("prices", "bars")
INTERVALS = tuple(level.name for level in LEVELS)  # the bar widths the API stores
# Headers of the API's answer the browser gets: what the file is and what it is called.
RELAYED = ("content-type", "content-disposition", "retry-after")


def export_href(kind: str, symbols: list[str], window: str, interval: str | None = None) -> str:
    """The page's link to /export.csv for a view: its stocks over its window up to now (every
    stock of the watchlist when none is named)."""
    query = {"kind": kind, "window": window}
    if symbols:
        query["symbols"] = ",".join(symbols)
    if interval:
        query["interval"] = interval
    return f"export.csv?{urlencode(query)}"


class ExportHandler(RequestHandler):
    """Asks the API for `kind`.csv of `symbols` over the last `window`, and relays it."""

    def initialize(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def get(self) -> None:
        kind = self.get_query_argument("kind", "prices")
        window = self.get_query_argument("window", "1h")
        interval = self.get_query_argument("interval", "1m")
        symbols = self.get_query_argument("symbols", "")
        problem = None
        if kind not in KINDS:
            problem = f"kind must be one of {', '.join(KINDS)}"
        elif window not in WINDOWS:
            problem = f"window must be one of {', '.join(WINDOWS)}"
        elif kind == "bars" and interval not in INTERVALS:
            problem = f"interval must be one of {', '.join(INTERVALS)}"
        if problem is not None:
            self.set_status(422)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(f"query parameter: {problem}\n")
            return
        params: dict[str, str | int] = {"start": int(time.time() * 1000) - WINDOWS[window]}
        if symbols:
            params["symbols"] = symbols  # the API checks them
        if kind == "bars":
            params["interval"] = interval
        # On the viewer's behalf: the API counts the export against the viewer's own limits.
        headers = {"X-Forwarded-For": self.runtime.viewer(self.request)}
        http = self.runtime.client.http
        request = http.build_request(
            "GET", f"/api/v1/{kind}.csv", params=params, headers=headers, timeout=None
        )
        try:
            answer = await http.send(request, stream=True)
        except httpx.HTTPError as exc:
            self.set_status(502)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(f"the API is unreachable: {type(exc).__name__}\n")
            return
        try:
            self.set_status(answer.status_code)
            for name in RELAYED:
                if name in answer.headers:
                    self.set_header(name, answer.headers[name])
            async for chunk in answer.aiter_raw():
                self.write(chunk)
                await self.flush()  # at the browser's pace: nothing piles up here
            self.finish()
        except StreamClosedError:
            pass  # the browser went: closing the answer below ends the API's read
        except httpx.HTTPError as exc:
            log.warning("export cut short", extra={"error": repr(exc)})
        finally:
            await answer.aclose()
