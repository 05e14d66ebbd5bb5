"""The node's aiohttp application: the HTTP API, `/v1/ws`, and (for `run`) the worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from service.config import Settings
from service.node import http_api
from service.node.context import DATABASE, HUB, LIMITER, REDIS, SETTINGS, ConnectLimiter
from service.node.hub import Hub
from service.node.ws import websocket_handler
from service.runtime import Runtime
from service.tasks import cancel_and_wait
from service.worker import STOP_TIMEOUT_S, Worker


def create_app(settings: Settings, *, with_worker: bool = False) -> web.Application:
    """The node app; with `with_worker` it also runs every worker loop (`buddycast run`)."""
    settings.require("redis_url", "jwt_secret", "api_key")
    app = web.Application(
        middlewares=[http_api.api_middleware],
        client_max_size=1024**2,
    )
    app[SETTINGS] = settings
    app[LIMITER] = ConnectLimiter(settings.connect_rate_per_ip)
    http_api.add_routes(app)
    app.router.add_get(http_api.WS_PATH, websocket_handler, allow_head=False)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        runtime = Runtime.open(settings)
        hub = Hub(settings, runtime.store, runtime.blocking_redis)
        app[REDIS] = runtime.redis
        app[DATABASE] = runtime.db
        app[HUB] = hub
        worker_task = None
        if with_worker:
            worker_task = asyncio.create_task(
                Worker(runtime.store, runtime.blocking_redis, settings).run(), name="worker"
            )
        await hub.start()
        yield
        await hub.stop()
        if worker_task is not None:
            await cancel_and_wait([worker_task], timeout_s=STOP_TIMEOUT_S + 3)
        await runtime.close()

    app.cleanup_ctx.append(resources)
    app.on_shutdown.append(_drain)
    return app


async def _drain(app: web.Application) -> None:
    """On shutdown close sessions with 1012 before aiohttp tears the sockets down."""
    await app[HUB].stop()


def create_worker_app(settings: Settings) -> web.Application:
    """The worker's small HTTP app: health, readiness and metrics on the metrics port."""
    settings.require("redis_url")
    app = web.Application(middlewares=[http_api.errors_middleware])
    app[SETTINGS] = settings
    app.router.add_get("/healthz", http_api.healthz, allow_head=False)
    app.router.add_get("/readyz", http_api.readyz, allow_head=False)
    app.router.add_get("/metrics", http_api.metrics_endpoint, allow_head=False)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        runtime = Runtime.open(settings)
        app[REDIS] = runtime.redis
        app[DATABASE] = runtime.db
        task = asyncio.create_task(
            Worker(runtime.store, runtime.blocking_redis, settings).run(), name="worker"
        )
        yield
        await cancel_and_wait([task], timeout_s=STOP_TIMEOUT_S + 3)
        await runtime.close()

    app.cleanup_ctx.append(resources)
    return app
