"""Deployments that the fault tests may break: each test gets its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.embedded_redis import RedisProcess
from tests.procs import Deployment


@pytest.fixture
def make_deployment(tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """Build a deployment on its own redis-server; everything is stopped after the test."""
    made: list[tuple[Deployment, RedisProcess]] = []

    def make(
        redis_args: tuple[str, ...] = (), database_url: str | None = None, **settings: Any
    ) -> Deployment:
        redis = RedisProcess(extra_args=redis_args).start()
        workdir = tmp_path / f"dep{len(made)}"
        workdir.mkdir()
        database_url = database_url or f"sqlite+aiosqlite:///{workdir / 'db.sqlite'}"
        dep = Deployment(workdir, redis.url, database_url, **settings)
        dep.redis = redis  # type: ignore[attr-defined]
        dep.migrate()
        made.append((dep, redis))
        return dep

    yield make
    for dep, redis in made:
        dep.stop()
        redis.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
