"""The node app in-process (with its worker) on the private Redis and each database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.exceptions import ResponseError

from service import keys
from service.config import Settings
from service.node.app import create_app
from service.node.context import DATABASE, HUB, REDIS

API_KEY = "k" * 32
JWT_SECRET = "x" * 32


@pytest.fixture(autouse=True)
def quick_worker_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process workers stop after their current blocking read: keep it short here."""
    from service.worker import consumer

    monkeypatch.setattr(consumer, "BLOCK_MS", 100)


def auth(key: str = API_KEY) -> dict[str, str]:
    """Headers carrying the backend API key."""
    return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def _serve(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(settings, with_worker=True)
    before = asyncio.all_tasks()
    try:
        async with TestClient(TestServer(app)) as client:
            await _worker_started(client, settings.shards)
            yield client
    finally:
        await _tidy_up(app, before)


async def _tidy_up(app: web.Application, before: set[asyncio.Task[Any]]) -> None:
    """Stop what the app's shutdown left behind, so it cannot leak into the next test.

    A cancellation swallowed inside redis-py can leave a worker loop running after the
    shutdown, reconnecting to Redis; stop it, then close the clients again.
    """
    left = asyncio.all_tasks() - before - {asyncio.current_task()}
    for _ in range(20):
        if not left:
            break
        for task in left:
            task.cancel()
        _done, left = await asyncio.wait(left, timeout=0.5)
    await app[REDIS].aclose(close_connection_pool=True)
    await app[HUB].blocking_redis.aclose(close_connection_pool=True)
    await app[DATABASE].close()
    assert not left, f"tasks survive the app's shutdown: {left}"


async def _worker_started(client: TestClient[Any, Any], shards: int) -> None:
    """Wait until the in-process worker has created its consumer groups."""
    redis = client.app[REDIS]
    wanted = {keys.FANOUT_GROUP, keys.PERSIST_GROUP}
    for _ in range(250):
        ready = 0
        for shard in range(shards):
            try:
                groups = await redis.xinfo_groups(keys.events_stream(shard))
            except ResponseError:  # the stream does not exist yet
                groups = []
            ready += wanted <= {group["name"] for group in groups}
        if ready == shards:
            await asyncio.sleep(0.05)  # let it get past its last start-up await
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("the in-process worker did not create its consumer groups")


@pytest.fixture
def serve(
    redis_url: str, database_url: str
) -> Callable[..., AbstractAsyncContextManager[TestClient[Any, Any]]]:
    """`async with serve(max_buddies=1000) as client:` runs the app with other settings."""

    def start(**overrides: Any) -> AbstractAsyncContextManager[TestClient[Any, Any]]:
        fields: dict[str, Any] = {
            "redis_url": redis_url,
            "database_url": database_url,
            "jwt_secret": JWT_SECRET,
            "api_key": API_KEY,
            "offline_grace_s": 0.5,
            "node_ttl_s": 3,
            "shards": 4,
            "max_buddies": 5,
            "node_id": "test-node",
            **overrides,
        }
        return _serve(Settings(**fields))

    return start


@pytest.fixture
async def api(
    serve: Callable[..., AbstractAsyncContextManager[TestClient[Any, Any]]],
) -> AsyncIterator[TestClient[Any, Any]]:
    """A client of the node app (max_buddies=5, 4 shards, worker in-process)."""
    async with serve() as client:
        yield client
