"""The node app in-process (with its worker) on the private Redis and each database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.config import Settings
from service.node.app import create_app

API_KEY = "k" * 32
JWT_SECRET = "x" * 32


def auth(key: str = API_KEY) -> dict[str, str]:
    """Headers carrying the backend API key."""
    return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def _serve(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(settings, with_worker=True)
    async with TestClient(TestServer(app)) as client:
        yield client


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
