"""Shared fixtures: a private redis-server, a fresh PostgreSQL database, both databases.

With CI=true a missing Redis or PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from service.embedded_redis import RedisNotFound, RedisProcess
from tests.procs import Deployment

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
POSTGRES_ADMIN_URL = os.environ.get(
    "BUDDYCAST_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def unavailable(reason: str) -> None:
    """Fail under CI, skip elsewhere: CI must never pass by skipping a real dependency."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: real dependencies are required)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """One private redis-server for the test session."""
    try:
        server = RedisProcess().start()
    except RedisNotFound as exc:
        unavailable(str(exc))
        raise
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """The private server's URL, emptied for each test."""
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    client.close()
    return redis_server.url


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database, migrated, dropped at the end of the session."""
    name = f"buddycast_test_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
        raise
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{base}/{name}"
    from service.storage import migrate

    asyncio.run(migrate(url))
    yield url
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _truncate_postgres(url: str) -> None:
    from service.storage import Database

    db = Database.connect(url)
    try:
        await db.truncate_all()
    finally:
        await db.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: a SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        from service.storage import migrate

        url = f"sqlite+aiosqlite:///{tmp_path / 'buddycast.db'}"
        asyncio.run(migrate(url))
        return url
    url = str(request.getfixturevalue("postgres_url"))
    asyncio.run(_truncate_postgres(url))
    return url


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[object]:
    from service.storage import Database

    db = Database.connect(database_url)
    yield db
    await db.close()


@pytest.fixture
def make_deployment(tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """Build a deployment on its own redis-server; everything is stopped after the test."""
    made: list[tuple[Deployment, RedisProcess]] = []

    def make(
        redis_args: tuple[str, ...] = (), database_url: str | None = None, **settings: Any
    ) -> Deployment:
        server = RedisProcess(extra_args=redis_args).start()
        workdir = tmp_path / f"dep{len(made)}"
        workdir.mkdir()
        database_url = database_url or f"sqlite+aiosqlite:///{workdir / 'db.sqlite'}"
        dep = Deployment(workdir, server.url, database_url, **settings)
        dep.redis = server  # type: ignore[attr-defined]
        dep.migrate()
        made.append((dep, server))
        return dep

    yield make
    for dep, server in made:
        dep.stop()
        server.cleanup()
