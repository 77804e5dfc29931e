"""The FastAPI application: routers, middleware, and what lives for the process (pool, listener)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from services.api import errors
from services.api.auth import Failures, Tokens
from services.api.config import ApiSettings
from services.api.disconnect import CancelOnDisconnect
from services.api.feed import Feed, MarketWatch
from services.api.limits import ClientLimits
from services.api.listener import Broadcaster
from services.api.metrics import ApiMetrics, TimingMiddleware
from services.api.routes import alerts, bars, export, health, market, prices, stocks, stream
from services.common.db import create_pool, redact_url

log = logging.getLogger(__name__)

PROCESS_SAMPLE_SECONDS = 5.0  # how often a process's CPU, memory and open files are sampled


async def sample_process(metrics: ApiMetrics) -> None:
    """Keep this process's worker_* metrics current until cancelled."""
    while True:
        metrics.sample_process()
        await asyncio.sleep(PROCESS_SAMPLE_SECONDS)


def create_app(settings: ApiSettings | None = None, worker: int | None = None) -> FastAPI:
    """A new application; nothing connects until it starts.

    `worker`: this process's index among several worker processes (settings then hold its share
    of the caps, see ApiSettings.worker_share), whose metrics add up; None for a process alone.
    """
    settings = settings or ApiSettings()
    metrics = ApiMetrics(multiprocess=worker is not None, worker=worker or 0)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        role = settings.api_db_role
        # min_size=0: the API starts (and says "not ready") while the database is down.
        app.state.pool = await create_pool(
            settings.database_url_now,
            role,
            min_size=0,
            max_size=settings.api_pool_size,
            statement_timeout=settings.api_statement_timeout,
        )
        app.state.broadcaster = broadcaster = Broadcaster(
            settings.database_url_now,
            role,
            metrics,
            settings.api_history_event_interval,
            app.state.market_watch,
            app.state.configured_feed,
            heartbeat=settings.api_stream_heartbeat,
        )
        broadcaster.start()
        resolving = asyncio.create_task(limits.trusted.keep_resolving(), name="trusted-proxies")
        sampling = asyncio.create_task(sample_process(metrics), name="process-metrics")
        metrics.workers.set(1)
        log.info(
            "api started",
            extra={
                "database": redact_url(settings.database_url),
                "worker": worker or 0,
                "pid": os.getpid(),
                "workers": settings.api_workers or 1,
                "max_streams": settings.api_max_streams,
                "pool_size": settings.api_pool_size,
            },
        )
        try:
            yield
        finally:
            metrics.workers.set(0)
            for task in (resolving, sampling):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await broadcaster.stop()
            try:
                await asyncio.wait_for(app.state.pool.close(), 2.0)
            except TimeoutError:
                app.state.pool.terminate()

    app = FastAPI(
        title="stockstreamer API",
        version="1.0.0",
        summary="Stock prices over REST and Server-Sent Events.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.limits = limits = ClientLimits(settings, metrics)
    app.state.tokens = Tokens(settings.write_tokens())
    app.state.auth_failures = Failures(settings.api_auth_failures_per_minute)
    app.state.configured_feed = configured = Feed.configured(
        settings.provider, settings.calendar, settings.extended_hours
    )
    # one per process: each calendar is built once (about 100 ms), each state kept until it changes
    app.state.market_watch = MarketWatch(fallback=configured.calendar)
    routers = (stocks, alerts, prices, bars, export, market, stream, health)
    for router in (r.router for r in routers):
        app.include_router(router)
    errors.install(app)
    # history reads (stream replays too) stop, and free what they hold, when their client goes
    app.add_middleware(
        CancelOnDisconnect,
        metrics=metrics,
        paths=frozenset(
            {
                "/api/v1/prices",
                "/api/v1/bars",
                "/api/v1/stream",
                "/api/v1/prices.csv",
                "/api/v1/bars.csv",
            }
        ),
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET"],
            allow_headers=["Last-Event-ID"],
        )
    app.add_middleware(TimingMiddleware, metrics=metrics)
    app.add_middleware(stream.ServerSend)  # outermost: see there
    return app
