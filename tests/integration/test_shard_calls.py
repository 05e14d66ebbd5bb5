"""Commands on many users' keys go as one script call per shard: status reads of
sessions opening together (each user read once), the node's interest writes, the
fan-out's interest reads; a broken key fails its shard's users only. Opens list their
sessions in one SADD. Real Redis, both databases."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ResponseError

from service import keys
from service.config import Settings
from service.events import status_from_hash
from service.node.interest import InterestRegistry
from service.presence import PresenceStore, now_ms
from service.redis_conn import connect
from service.storage import Database
from service.worker.fanout import Fanout

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


async def test_interest_is_written_a_script_call_per_shard(
    store: PresenceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, str]] = []
    write = store.scripts.interest

    async def counted(**call: Any) -> Any:
        calls.append((len(call["keys"]), call["args"][1]))
        return await write(**call)

    monkeypatch.setattr(store.scripts, "interest", counted)
    registry = InterestRegistry(store.redis, "node-i", store.keys, store.scripts)
    registry.start()
    try:
        await registry.add(USERS)
        shards = {store.keys(user).shard for user in USERS}
        assert len(calls) == len(shards) and sum(n for n, _ in calls) == len(USERS)
        for user in USERS:
            assert await store.redis.smembers(store.keys(user).interest) == {"node-i"}
        registry.remove(USERS[:10])
        await registry.add([])  # returns after a flush that includes the removal
        for user in USERS:
            held = await store.redis.smembers(store.keys(user).interest)
            assert held == (set() if user in USERS[:10] else {"node-i"})
        assert await store.redis.smembers(keys.node_interest("node-i")) == set(USERS[10:])
    finally:
        await registry.stop()


async def test_fanout_reads_interest_by_shard_and_a_broken_set_fails_the_batch(
    store: PresenceStore,
) -> None:
    for n, user in enumerate(USERS):
        await store.redis.sadd(store.keys(user).interest, f"node-{n % 2}")
    await store.redis.zadd(keys.NODES, {"node-0": 2e12, "node-1": 2e12})
    found = await store.read_each("SMEMBERS", USERS, lambda k: k.interest)
    assert found == {user: [f"node-{n % 2}"] for n, user in enumerate(USERS)}
    fanout = Fanout(store, store.settings)
    await store.redis.delete(store.keys("r3").interest)
    await store.redis.set(store.keys("r3").interest, "not a set")
    entry = ("1-0", {"k": "s", "u": "r3", "p": "away", "v": "1", "ts": "1", "on": "1"})
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await fanout.handle([entry])


async def test_opens_list_their_sessions_in_one_sadd_and_a_broken_set_fails_them(
    store: PresenceStore,
) -> None:
    opened = await asyncio.gather(*(store.open_session(u, f"s-{u}", "node-o") for u in USERS))
    assert all(opened)
    listed = await store.redis.smembers(keys.node_sessions("node-o"))
    assert listed == {f"s-{u} {u}" for u in USERS}
    await store.redis.set(keys.node_sessions("node-x"), "not a set")
    refused = await asyncio.gather(
        *(store.open_session(u, f"x-{u}", "node-x") for u in USERS[:3]), return_exceptions=True
    )
    assert all(isinstance(r, ResponseError) for r in refused), refused


async def test_sessions_closing_together_share_one_pipeline(
    store: PresenceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    run = store._close_sessions

    async def counted(closings: list[Any]) -> Any:
        batches.append(len(closings))
        return await run(closings)

    monkeypatch.setattr(store._closes, "_fetch", counted)
    sessions = [(u, f"s-{u}") for u in USERS] + [("r0", "t-r0")]
    assert all(await asyncio.gather(*(store.open_session(u, s, "node-c") for u, s in sessions)))
    await store.redis.delete(store.keys("r5").sessions)
    await store.redis.set(store.keys("r5").sessions, "not a hash")  # WRONGTYPE for r5 only
    before = now_ms()
    closed = await asyncio.gather(
        *(store.close_session(u, s, "node-c", 30.0) for u, s in sessions[:-1]),
        return_exceptions=True,
    )
    assert batches == [len(USERS)]  # one pipeline, not a round trip or two each
    assert isinstance(closed[5], ResponseError) and "WRONGTYPE" in str(closed[5])
    assert [c for n, c in enumerate(closed) if n != 5] == [None] * (len(USERS) - 1)
    # r0 keeps its other session; every other user's last one schedules its `offline`.
    assert await store.redis.hkeys(store.keys("r0").sessions) == ["t-r0"]
    due = {u: await store.redis.zscore(store.keys(u).due, u) for u in USERS}
    assert due["r0"] is None and due["r5"] is None
    for user in USERS[1:5] + USERS[6:]:
        assert before + 30_000 <= due[user] <= now_ms() + 30_000
    assert await store.redis.smembers(keys.node_sessions("node-c")) == {"t-r0 r0"}
    # Closed again (a retry after a lost reply): nothing changes.
    await store.close_session("r1", "s-r1", "node-c", 60.0)
    assert await store.redis.zscore(store.keys("r1").due, "r1") == due["r1"]


async def test_fanout_sends_a_list_event_to_the_nodes_of_its_owners_sessions(
    store: PresenceStore,
) -> None:
    await store.redis.hset(store.keys("r4").sessions, mapping={"s1": "node-0", "s2": "node-1"})
    await store.redis.sadd(store.keys("r5").interest, "node-1")
    await store.redis.zadd(keys.NODES, {"node-0": 2e12, "node-1": 2e12})
    entries = [
        ("1-0", {"k": "l", "u": "r4", "add": '["r5"]', "rm": "[]"}),
        ("2-0", {"k": "s", "u": "r5", "p": "away", "v": "1", "ts": "1", "on": "1"}),
    ]
    await Fanout(store, store.settings).handle(entries)
    assert await store.redis.xlen(keys.node_inbox("node-0")) == 1  # the list event
    assert await store.redis.xlen(keys.node_inbox("node-1")) == 1  # both, in one entry
