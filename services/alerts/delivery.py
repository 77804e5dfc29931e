"""Deliveries: each firing to each of its channels through Apprise, retried, every attempt stored.

Apprise is synchronous (it blocks on HTTP): each send runs in a thread, at most `concurrency`
at a time. A firing's id goes with every delivery of it (title, body, and for JSON webhooks a
`firing_id` field and an `X-Stockstreamer-Firing-Id` header), so a receiver that gets it twice
(a retry after a lost answer, a redelivery after a restart) can tell.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import stamina

from services.alerts.channels import apprise_module
from services.alerts.metrics import AlertsMetrics

log = logging.getLogger(__name__)

FIRING_HEADER = "X-Stockstreamer-Firing-Id"
DETAIL_MAX = 500

Record = Callable[[int, str, int, str, str | None], Awaitable[None]]
"""Stores one attempt: (firing id, channel, attempt, result, detail)."""


@dataclass(frozen=True, slots=True)
class Notice:
    """A firing as delivered: what fired, where and when."""

    firing_id: int
    alert_id: int
    symbol: str
    condition: str
    value: float
    note: str | None
    price: float
    line: float
    tick_ts: datetime
    tick_event_id: int | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Notice:
        return cls(
            row["firing_id"],
            row["alert_id"],
            row["symbol"],
            row["condition"],
            row["value"],
            row["note"],
            row["price"],
            row["line"],
            row["tick_ts"],
            row["tick_event_id"],
        )

    def title(self) -> str:
        return f"{self.symbol} {self._crossed()} {self.line:,.4g}: {self.price:,.4g}"

    def body(self) -> str:
        lines = [
            f"{self.symbol} is at {self.price:,.6g}, {self._crossed()} {self.line:,.6g} "
            f"({self._rule()}) at {self.tick_ts.isoformat(timespec='seconds')}.",
        ]
        if self.note:
            lines.append(f"Note: {self.note}")
        lines.append(
            f"Alert {self.alert_id}, firing {self.firing_id} (the same in every delivery)."
        )
        return "\n".join(lines)

    def _crossed(self) -> str:
        up = self.condition == "above" or (self.condition == "change_pct" and self.value >= 0)
        return "at or above" if up else "at or below"

    def _rule(self) -> str:
        if self.condition == "change_pct":
            return f"{self.value:+g}% against the previous close"
        return f"{self.condition} {self.value:g}"


class DeliveryFailed(Exception):
    """One attempt did not get through; its detail never holds the channel's URL."""


class Deliverer:
    """Delivers firings to named channels in the background; `drain` waits for them."""

    def __init__(
        self,
        channels: dict[str, str],
        record: Record,
        metrics: AlertsMetrics,
        attempts: int = 5,
        concurrency: int = 8,
        wait_initial: float = 1.0,
        wait_max: float = 60.0,
    ) -> None:
        self.channels = channels
        self.record = record
        self.metrics = metrics
        self.attempts = attempts
        self.wait_initial = wait_initial
        self.wait_max = wait_max
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: set[tuple[int, str]] = set()  # (firing, channel) being delivered
        self._apprise: Any = apprise_module() if channels else None

    def __len__(self) -> int:
        return len(self._tasks)

    def submit(self, notice: Notice, channel: str, made: int = 0) -> None:
        """Deliver `notice` to `channel` (after `made` earlier attempts), unless under way."""
        key = (notice.firing_id, channel)
        if key in self._busy:
            return
        self._busy.add(key)
        task = asyncio.create_task(self._deliver(notice, channel, made), name="delivery")
        self._tasks.add(task)
        self.metrics.deliveries_in_flight.set(len(self._tasks))
        task.add_done_callback(lambda t: self._done(t, key))

    def _done(self, task: asyncio.Task[None], key: tuple[int, str]) -> None:
        self._tasks.discard(task)
        self._busy.discard(key)
        self.metrics.deliveries_in_flight.set(len(self._tasks))
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery failed unexpectedly", exc_info=task.exception())

    async def drain(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for deliveries under way; cancel the rest (they are
        redelivered at the next start). How many were cancelled."""
        if not self._tasks:
            return 0
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        return len(pending)

    async def _deliver(self, notice: Notice, channel: str, made: int) -> None:
        url = self.channels.get(channel)
        if url is None:
            # configured once, no longer: nowhere to send it
            await self._store(notice, channel, made + 1, "abandoned", "channel not configured")
            return
        attempts = max(1, self.attempts - made)
        try:
            async for attempt in stamina.retry_context(
                on=DeliveryFailed,
                attempts=attempts,
                timeout=None,
                wait_initial=self.wait_initial,
                wait_max=self.wait_max,
                wait_jitter=self.wait_initial,
            ):
                with attempt:
                    number = made + attempt.num
                    async with self._slots:
                        failure = await asyncio.to_thread(self._send, url, notice)
                    if failure is None:
                        await self._store(notice, channel, number, "delivered", None)
                        if notice.tick_event_id is not None:
                            latency = time.time() - notice.tick_ts.timestamp()
                            self.metrics.tick_to_delivery.labels(channel).observe(latency)
                        return
                    last = attempt.num == attempts
                    await self._store(
                        notice, channel, number, "abandoned" if last else "failed", failure
                    )
                    raise DeliveryFailed(failure)
        except DeliveryFailed as exc:
            log.warning(
                "delivery abandoned",
                extra={
                    "firing_id": notice.firing_id,
                    "channel": channel,
                    "attempts": made + attempts,
                    "detail": str(exc),
                },
            )

    async def _store(
        self, notice: Notice, channel: str, attempt: int, result: str, detail: str | None
    ) -> None:
        await self.record(notice.firing_id, channel, attempt, result, detail)
        self.metrics.deliveries.labels(channel, result).inc()
        if result != "delivered":
            log.info(
                "delivery attempt failed",
                extra={
                    "firing_id": notice.firing_id,
                    "channel": channel,
                    "attempt": attempt,
                    "detail": detail,
                },
            )

    def _send(self, url: str, notice: Notice) -> str | None:
        """One attempt, in a worker thread: None when delivered, else what went wrong."""
        plugin = self._apprise.Apprise.instantiate(url)
        if plugin is None:
            return "Apprise does not understand the channel's URL"
        service = str(getattr(plugin, "service_name", "the service"))
        extras = getattr(plugin, "payload_extras", None)
        if isinstance(extras, dict):  # JSON, form and XML webhooks: fields of their own
            json_body = type(plugin).__name__ == "NotifyJSON"
            extras.update(
                {
                    "firing_id": notice.firing_id if json_body else str(notice.firing_id),
                    "alert_id": notice.alert_id if json_body else str(notice.alert_id),
                    "symbol": notice.symbol,
                }
            )
        headers = getattr(plugin, "headers", None)
        if isinstance(headers, dict):
            headers[FIRING_HEADER] = str(notice.firing_id)
        try:
            sent = plugin.notify(body=notice.body(), title=notice.title())
        except Exception as exc:  # noqa: BLE001 - a plugin's bug is one failed attempt
            return f"{service}: {type(exc).__name__}"[:DETAIL_MAX]
        return None if sent else f"{service} did not accept the notification"[:DETAIL_MAX]
