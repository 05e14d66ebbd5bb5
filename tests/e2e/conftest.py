"""A deployment of real processes: two nodes and two workers on a private redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from service.embedded_redis import RedisProcess
from tests.procs import Deployment


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    workdir: Path = tmp_path_factory.mktemp("e2e")
    database_url = f"sqlite+aiosqlite:///{workdir / 'buddycast.db'}"
    # A Redis of its own: other modules flush the shared one between tests.
    redis = RedisProcess().start()
    dep = Deployment(workdir, redis.url, database_url)
    dep.migrate()
    try:
        for role in ("node", "node", "worker", "worker"):
            dep.add(role)
        yield dep
    finally:
        dep.stop()
        redis.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def uid() -> str:
    """A prefix that keeps each test's users apart on the shared deployment."""
    return uuid.uuid4().hex[:6]
