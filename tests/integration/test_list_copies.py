"""Redis copies of lists: read from SQL when absent, stored for the next session, and
never stored stale when an edit races the SQL read; sessions opening together share
their round trips. Real Redis, both databases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from redis.exceptions import ResponseError

from service import keys
from service.config import Settings
from service.presence import PresenceStore
from service.redis_conn import connect
from service.storage import Database


@pytest.fixture
async def store(redis_url: str, database: Database) -> AsyncIterator[PresenceStore]:
    edges = [(f"o{o}", f"b{b}") for o in range(30) for b in range(o % 7)]
    await database.import_edges([(n, *edge) for n, edge in enumerate(edges)], 1000, 1)
    redis = connect(redis_url)
    yield PresenceStore(redis, database, Settings(redis_url=redis_url))
    await redis.aclose()


def expected(owner: int) -> set[str]:
    return {f"b{b}" for b in range(owner % 7)}


async def copy_of(store: PresenceStore, owner: str) -> set[str]:
    return set(await store.redis.smembers(store.keys(owner).list))


async def test_sessions_opening_together_get_their_lists_and_leave_copies(
    store: PresenceStore,
) -> None:
    owners = [f"o{o}" for o in range(30)]
    lists = await asyncio.gather(*(store.load_list(owner) for owner in owners))
    assert lists == [expected(o) for o in range(30)]
    for o, owner in enumerate(owners):
        # The copy marks itself loaded, so an empty list is a copy too.
        assert await copy_of(store, owner) == expected(o) | {keys.LIST_LOADED}
        assert await store.redis.pttl(store.keys(owner).list) > 0
    # The next session reads the copy, not SQL.
    await store.redis.srem(store.keys("o6").list, "b0")
    assert await store.load_list("o6") == expected(6) - {"b0"}


async def test_an_edit_during_the_sql_read_leaves_no_copy(
    store: PresenceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = store.db.get_lists

    async def read_while_edited(owners: Sequence[str]) -> Any:
        found = await read(owners)
        # An edit committed after this read: its Redis step bumps the version.
        await store.redis.incr(store.keys("o3").list_version)
        return found

    monkeypatch.setattr(store.db, "get_lists", read_while_edited)
    assert await asyncio.gather(store.load_list("o3"), store.load_list("o4")) == [
        expected(3),
        expected(4),
    ]
    assert await copy_of(store, "o3") == set()  # refused: the next load reads SQL again
    assert await copy_of(store, "o4") == expected(4) | {keys.LIST_LOADED}


async def test_sessions_opening_together_share_round_trips_and_keep_the_cap(
    store: PresenceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    run = store._open_sessions

    async def counted(openings: list[Any]) -> dict[Any, int]:
        batches.append(len(openings))
        return await run(openings)

    monkeypatch.setattr(store._opens, "_fetch", counted)
    await store.hydrate([f"o{n}" for n in range(1, 14)])
    capped = [store.open_session("o1", f"c{n}", "node-a", max_sessions=3) for n in range(12)]
    free = [store.open_session(f"o{n}", f"f{n}", "node-a") for n in range(2, 14)]
    admitted = await asyncio.gather(*capped, *free)
    assert admitted[:12].count(True) == 3 and all(admitted[12:])
    assert batches == [24]  # one pipeline, not 24 round trips
    listed = await store.redis.smembers(keys.node_sessions("node-a"))
    opened = {f"c{n} o1" for n, ok in enumerate(admitted[:12]) if ok}
    assert listed == opened | {f"f{n} o{n}" for n in range(2, 14)}
    assert len(await store.redis.hkeys(store.keys("o1").sessions)) == 3


async def test_a_long_list_is_copied_whole(store: PresenceStore) -> None:
    buddies = {f"long-buddy-{n}" for n in range(2_500)}  # past the script's SADD chunk
    await store.db.import_edges([(n, "long", b) for n, b in enumerate(sorted(buddies))], 5000, 1)
    assert await store.load_list("long") == buddies
    assert await copy_of(store, "long") == buddies | {keys.LIST_LOADED}


async def test_one_users_broken_key_fails_only_that_users_open(store: PresenceStore) -> None:
    users = [f"o{n}" for n in range(1, 6)]
    await store.hydrate(users)
    await store.redis.delete(store.keys("o3").status)
    await store.redis.set(store.keys("o3").status, "not a hash")  # WRONGTYPE for the script
    await store.redis.set(store.keys("o4").list, "not a set")
    opened = await asyncio.gather(
        *(store.open_session(u, f"s{u}", "node-b") for u in users), return_exceptions=True
    )
    assert isinstance(opened[2], ResponseError) and "WRONGTYPE" in str(opened[2])
    assert [opened[n] for n in (0, 1, 3, 4)] == [True] * 4
    lists = await asyncio.gather(*(store.load_list(u) for u in users), return_exceptions=True)
    assert isinstance(lists[3], ResponseError)
    assert [lists[n] for n in (0, 1, 2, 4)] == [expected(n) for n in (1, 2, 3, 5)]


async def test_copies_of_one_shard_are_stored_by_one_call_and_checked_each(
    store: PresenceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = max(keys.by_shard([f"o{o}" for o in range(30)], store.keys), key=len)
    assert len(group) >= 3
    calls: list[int] = []
    store_copies = store.scripts.load_list

    async def counted(**call: Any) -> Any:
        calls.append(len(call["keys"]) // 2)
        return await store_copies(**call)

    read = store.db.get_lists

    async def read_while_one_is_edited(owners: Sequence[str]) -> Any:
        found = await read(owners)
        await store.redis.incr(store.keys(group[1]).list_version)
        return found

    monkeypatch.setattr(store.scripts, "load_list", counted)
    monkeypatch.setattr(store.db, "get_lists", read_while_one_is_edited)
    loaded = await asyncio.gather(*(store.load_list(owner) for owner in group))
    assert loaded == [expected(int(owner[1:])) for owner in group]
    assert calls == [len(group)]
    assert await copy_of(store, group[1]) == set()  # raced: not stored
    for owner in (group[0], *group[2:]):
        assert await copy_of(store, owner) == expected(int(owner[1:])) | {keys.LIST_LOADED}
