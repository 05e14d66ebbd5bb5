"""Real processes: two nodes and two workers, on one Redis with SQLite, and on a
3-master Redis Cluster with PostgreSQL. Every e2e test runs on both."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from service.embedded_redis import RedisProcess
from tests.cluster import RedisCluster
from tests.conftest import POSTGRES_ADMIN_URL, _pg_admin, unavailable
from tests.procs import Deployment


@pytest.fixture(scope="module", params=["redis+sqlite", "cluster+postgres"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    workdir: Path = tmp_path_factory.mktemp("e2e")
    cleanups = []
    if request.param == "redis+sqlite":
        # A Redis of its own: other modules flush the shared one between tests.
        redis = RedisProcess().start()
        cleanups.append(redis.cleanup)
        redis_url = redis.url
        database_url = f"sqlite+aiosqlite:///{workdir / 'buddycast.db'}"
    else:
        name = f"buddycast_e2e_{uuid.uuid4().hex[:8]}"
        try:
            asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
        except Exception as exc:
            unavailable(f"PostgreSQL is not reachable: {exc}")
        cleanups.append(lambda: asyncio.run(_pg_admin(f'DROP DATABASE "{name}" WITH (FORCE)')))
        cluster = RedisCluster().start()
        cleanups.append(cluster.stop)
        redis_url = cluster.url
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
        database_url = base.replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
    dep = Deployment(workdir, redis_url, database_url)
    try:
        dep.migrate()
        for role in ("node", "node", "worker", "worker"):
            dep.add(role)
        yield dep
    finally:
        dep.stop()
        for cleanup in reversed(cleanups):
            cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def uid() -> str:
    """A prefix that keeps each test's users apart on the shared deployment."""
    return uuid.uuid4().hex[:6]
