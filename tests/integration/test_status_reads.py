"""Status reads of sessions opening together: one pipeline, one script call per shard,
each user read once; a broken key fails the reads of its shard only. Real Redis, both
databases."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ResponseError

from service.config import Settings
from service.events import status_from_hash
from service.presence import PresenceStore
from service.redis_conn import connect
from service.storage import Database

USERS = [f"r{n}" for n in range(24)]


@pytest.fixture
async def store(redis_url: str, database: Database) -> AsyncIterator[PresenceStore]:
    redis = connect(redis_url)
    store = PresenceStore(redis, database, Settings(redis_url=redis_url))
    await store.hydrate(USERS)
    yield store
    await redis.aclose()


async def test_reads_asked_together_share_one_pipeline_and_read_each_user_once(
    store: PresenceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.redis.hset(store.keys("r5").status, mapping={"t": "at lunch", "v": 7})
    fetched: list[list[str]] = []
    run = store._statuses_from_redis

    async def counted(users: list[str]) -> Any:
        fetched.append(users)
        return await run(users)

    monkeypatch.setattr(store._redis_statuses, "_fetch", counted)
    asks = [USERS[n : n + 8] for n in range(0, 17, 4)]  # overlapping, as lists do
    got = await asyncio.gather(*(store.read_statuses(ask) for ask in asks))
    assert len(fetched) == 1
    assert sorted(fetched[0]) == sorted(set(itertools.chain(*asks)))
    assert len({store.keys(user).shard for user in fetched[0]}) > 1
    for ask, statuses in zip(asks, got, strict=True):
        assert list(statuses) == ask
        for user in ask:
            stored = await store.redis.hgetall(store.keys(user).status)
            assert statuses[user] == status_from_hash(user, stored)
    assert got[1]["r5"].text == "at lunch" and got[1]["r5"].version == 7


async def test_a_broken_status_key_fails_only_the_reads_of_its_shard(
    store: PresenceStore,
) -> None:
    broken = store.keys("r3")
    await store.redis.delete(broken.status)
    await store.redis.set(broken.status, "not a hash")  # WRONGTYPE for the script
    elsewhere = [user for user in USERS if store.keys(user).shard != broken.shard]
    assert elsewhere
    results = await asyncio.gather(
        store.read_statuses(["r3"]), store.read_statuses(elsewhere), return_exceptions=True
    )
    assert isinstance(results[0], ResponseError) and "WRONGTYPE" in str(results[0])
    assert isinstance(results[1], dict) and list(results[1]) == elsewhere
