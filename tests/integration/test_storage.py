"""The SQL storage layer against a SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.domain import Presence, Status
from service.errors import ListFull, Unavailable
from service.storage import Database, ImportResult, migrate
from service.storage.models import edges


def status(user: str, version: int, text: str = "", presence: Presence = Presence.ONLINE) -> Status:
    return Status(user, presence, text, None, version, 1_000 + version)


async def utimes(db: Database, owner: str) -> dict[str, int]:
    async with db.engine.connect() as conn:
        result = await conn.execute(
            select(edges.c.buddy, edges.c.utime).where(edges.c.owner == owner)
        )
        return {row.buddy: row.utime for row in result}


async def edge_count(db: Database) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(edges))).scalar_one())


# Statuses


async def test_upsert_keeps_the_highest_version(database: Database) -> None:
    assert await database.upsert_statuses([status("alice", 1, "one")]) == 1
    assert await database.upsert_statuses([status("alice", 3, "three", Presence.BUSY)]) == 1
    # Replays of an older or equal version change nothing.
    assert await database.upsert_statuses([status("alice", 2, "two")]) == 0
    assert await database.upsert_statuses([status("alice", 3, "other")]) == 0

    got = await database.get_status("alice")
    assert got == Status("alice", Presence.BUSY, "three", None, 3, 1_003, visible=False)


async def test_upsert_orders_by_life_then_version(database: Database) -> None:
    # A deleted user's id used again: the new life wins at any version, the old never.
    old, new = 1_000, 2_000
    assert await database.upsert_statuses([replace(status("bob", 9, "old"), life=old)]) == 1
    assert await database.upsert_statuses([replace(status("bob", 1, "new"), life=new)]) == 1
    assert await database.upsert_statuses([replace(status("bob", 10, "late"), life=old)]) == 0
    got = await database.get_status("bob")
    assert got is not None and (got.life, got.version, got.text) == (new, 1, "new")
    # In one batch, too.
    batch = [replace(status("eve", 1, "new"), life=new), replace(status("eve", 7), life=old)]
    assert await database.upsert_statuses(batch) == 1
    got = await database.get_status("eve")
    assert got is not None and (got.life, got.text) == (new, "new")


async def test_forget_statuses_drops_only_ended_lives(database: Database) -> None:
    await database.upsert_statuses(
        [replace(status("bob", 3), life=1_000), replace(status("eve", 1), life=3_000)]
    )
    await database.forget_statuses({"bob": 2_000, "eve": 2_000, "nobody": 2_000})
    assert await database.get_status("bob") is None
    assert await database.get_status("eve") is not None  # a life begun after the deletion
    await database.forget_statuses({})


async def test_upsert_batch_with_mixed_versions(database: Database) -> None:
    await database.upsert_statuses([status("a", 5), status("b", 5)])
    written = await database.upsert_statuses(
        [
            status("a", 4, "older"),  # ignored
            status("b", 6, "newer"),  # replaces
            status("c", 1, "new"),  # inserted
            status("c", 2, "newer still"),  # same batch: the higher version wins
            status("c", 1, "stale"),
        ]
    )
    assert written == 2
    got = await database.get_statuses(["a", "b", "c"])
    assert {u: (s.version, s.text) for u, s in got.items()} == {
        "a": (5, ""),
        "b": (6, "newer"),
        "c": (2, "newer still"),
    }


async def test_upsert_stores_every_field(database: Database) -> None:
    item = Status(
        "bob", Presence.INVISIBLE, "hidden", "https://x.example/a.png", 7, 1_700_000_000_123
    )
    await database.upsert_statuses([item])
    assert await database.get_status("bob") == item
    assert await database.upsert_statuses([]) == 0


async def test_get_statuses_many_and_missing(database: Database) -> None:
    users = [f"user{i}" for i in range(1_200)]  # more than one IN chunk
    assert await database.upsert_statuses([status(u, 1) for u in users]) == 1_200
    got = await database.get_statuses([*users, "nobody", "user0"])
    assert set(got) == set(users)
    assert all(s.visible is False and s.user == u for u, s in got.items())
    assert await database.get_status("nobody") is None
    assert await database.get_statuses([]) == {}


async def test_concurrent_upserts_keep_the_highest_version(database: Database) -> None:
    versions = list(range(1, 41))
    await asyncio.gather(
        *(database.upsert_statuses([status("alice", v, f"v{v}")]) for v in versions[::-1])
    )
    got = await database.get_status("alice")
    assert got is not None and (got.version, got.text) == (40, "v40")


# Edges


async def test_add_edge_new_then_touched(database: Database) -> None:
    assert await database.add_edge("alice", "bob", 10, 100) is True
    assert await database.add_edge("alice", "bob", 10, 200) is False
    assert await utimes(database, "alice") == {"bob": 200}
    assert await database.get_list("alice") == ["bob"]
    assert await database.get_list("bob") == []


async def test_add_edge_at_the_cap(database: Database) -> None:
    for buddy in ("c", "b"):
        assert await database.add_edge("a", buddy, 2, 100)
    with pytest.raises(ListFull):
        await database.add_edge("a", "d", 2, 200)
    # An existing edge is still touched at the cap.
    assert await database.add_edge("a", "b", 2, 300) is False
    assert await utimes(database, "a") == {"b": 300, "c": 100}
    assert await database.get_list("a") == ["b", "c"]


async def test_get_list_sorts_like_python(database: Database) -> None:
    buddies = ["b", "B", "a-z", "a_z", "a.z", "A", "1", "z@x", "a:z"]
    for buddy in buddies:
        await database.add_edge("owner", buddy, 100, 1)
    assert await database.get_list("owner") == sorted(buddies)


async def test_get_lists_of_many_owners_at_once(database: Database) -> None:
    owners = [f"owner{i}" for i in range(1_100)]  # more than one IN chunk
    for i, owner in enumerate(owners[:600]):
        for buddy in ("b", "B", f"x{i}"):
            await database.add_edge(owner, buddy, 100, 1)
    lists = await database.get_lists([*owners, "owner0"])
    assert set(lists) == set(owners)
    assert lists["owner7"] == sorted(["b", "B", "x7"]) == await database.get_list("owner7")
    assert lists["owner1000"] == []
    assert await database.get_lists([]) == {}


async def test_remove_edge_is_idempotent(database: Database) -> None:
    await database.add_edge("a", "b", 10, 1)
    assert await database.remove_edge("a", "b") is True
    assert await database.remove_edge("a", "b") is False
    assert await database.get_list("a") == []


async def test_friendship_both_ways(database: Database) -> None:
    await database.add_edge("b", "a", 10, 1)
    assert await database.add_friendship("a", "b", 10, 5) == (True, False)
    assert await database.get_list("a") == ["b"]
    assert await database.get_list("b") == ["a"]
    assert await database.add_friendship("b", "a", 10, 6) == (False, False)
    assert await utimes(database, "b") == {"a": 6}


async def test_friendship_at_the_cap_changes_nothing(database: Database) -> None:
    await database.add_edge("a", "x", 2, 1)
    await database.add_edge("a", "y", 2, 1)
    await database.add_edge("b", "z", 2, 1)
    # a -> b would pass a's cap: b -> a (which fits) must not be written either.
    with pytest.raises(ListFull):
        await database.add_friendship("b", "a", 2, 9)
    with pytest.raises(ListFull):
        await database.add_friendship("a", "b", 2, 9)
    assert await database.get_list("a") == ["x", "y"]
    assert await database.get_list("b") == ["z"]
    assert await utimes(database, "b") == {"z": 1}
    # Existing edges at the cap are only touched.
    await database.add_edge("b", "a", 2, 1)
    await database.remove_edge("a", "y")
    await database.add_edge("a", "b", 2, 1)
    assert await database.add_friendship("a", "b", 2, 10) == (False, False)
    assert await utimes(database, "a") == {"b": 10, "x": 1}


async def test_remove_friendship(database: Database) -> None:
    await database.add_friendship("a", "b", 10, 1)
    await database.add_edge("a", "c", 10, 1)
    assert await database.remove_friendship("a", "b") == (True, True)
    assert await database.remove_friendship("a", "b") == (False, False)
    await database.add_edge("c", "a", 10, 1)
    assert await database.remove_friendship("c", "a") == (True, True)
    assert await database.get_list("a") == []


async def test_delete_user(database: Database) -> None:
    await database.upsert_statuses([status("bob", 1), status("carol", 1)])
    for owner in ("dave", "alice", "carol"):
        await database.add_edge(owner, "bob", 10, 1)
    await database.add_edge("bob", "alice", 10, 1)
    await database.add_edge("bob", "erin", 10, 1)
    await database.add_edge("alice", "carol", 10, 1)

    assert await database.delete_user("bob") == ["alice", "carol", "dave"]
    assert await database.get_status("bob") is None
    assert await database.get_list("bob") == []
    assert await database.get_list("alice") == ["carol"]
    assert await database.get_list("dave") == []
    assert await database.get_status("carol") is not None
    assert await edge_count(database) == 1
    assert await database.delete_user("bob") == []


# Import


async def test_import_added_present_and_list_full(database: Database) -> None:
    await database.add_edge("a", "x", 3, 1)
    await database.add_edge("b", "x", 3, 1)
    result = await database.import_edges(
        [
            (1, "a", "x"),  # present, touched
            (2, "a", "y"),  # added
            (4, "c", "x"),  # added
            (5, "a", "y"),  # duplicate in the batch: present, takes no second slot
            (6, "a", "z"),  # added: a is now at 3
            (7, "a", "w"),  # list_full
            (9, "b", "y"),  # added
            (10, "a", "w"),  # still list_full
            (11, "a", "x"),  # present again
        ],
        3,
        50,
    )
    assert result == ImportResult(
        added=[("a", "y"), ("c", "x"), ("a", "z"), ("b", "y")],
        present=3,
        rejected=[(7, "list_full"), (10, "list_full")],
    )
    assert await database.get_list("a") == ["x", "y", "z"]
    assert await database.get_list("b") == ["x", "y"]
    assert await database.get_list("c") == ["x"]
    assert await utimes(database, "a") == {"x": 50, "y": 50, "z": 50}
    assert await utimes(database, "b") == {"x": 1, "y": 50}


async def test_import_across_batches(database: Database) -> None:
    first = await database.import_edges([(1, "a", "b"), (2, "a", "c")], 2, 1)
    second = await database.import_edges([(3, "a", "c"), (4, "a", "d")], 2, 2)
    assert (first.added, first.present, first.rejected) == ([("a", "b"), ("a", "c")], 0, [])
    assert (second.added, second.present, second.rejected) == ([], 1, [(4, "list_full")])
    assert await database.import_edges([], 2, 3) == ImportResult([], 0, [])


async def test_import_100k_edges(database: Database, capsys: pytest.CaptureFixture[str]) -> None:
    owners, per_owner, batch = 2_000, 50, 1_000
    items = [
        (i * per_owner + k + 1, f"user{i:05d}", f"user{(i + k + 1) % owners:05d}")
        for i in range(owners)
        for k in range(per_owner)
    ]
    started = time.perf_counter()
    added = present = 0
    for start in range(0, len(items), batch):
        result = await database.import_edges(items[start : start + batch], 1_000, 1)
        assert result.rejected == []
        added += len(result.added)
        present += result.present
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(
            f"\n[{database.dialect}] imported {len(items)} edges in {elapsed:.2f} s"
            f" ({len(items) / elapsed:,.0f} edges/s)"
        )
    assert (added, present) == (len(items), 0)
    assert await edge_count(database) == len(items)
    assert len(await database.get_list("user00007")) == per_owner


# Concurrency


async def test_concurrent_add_edge_respects_the_cap(database: Database) -> None:
    async def add(i: int) -> bool | None:
        try:
            return await database.add_edge("owner", f"buddy{i:02d}", 10, i)
        except ListFull:
            return None

    results = await asyncio.gather(*(add(i) for i in range(50)))
    assert results.count(True) == 10
    assert results.count(None) == 40
    assert len(await database.get_list("owner")) == 10


async def test_concurrent_friendships_and_imports(database: Database) -> None:
    async def befriend(i: int) -> bool:
        try:
            await database.add_friendship("hub", f"f{i:02d}", 5, i)
        except ListFull:
            return False
        return True

    async def load(i: int) -> int:
        result = await database.import_edges([(1, "hub", f"g{i:02d}")], 5, i)
        return len(result.added)

    outcomes = await asyncio.gather(
        *(befriend(i) for i in range(20)), *(load(i) for i in range(20))
    )
    assert len(await database.get_list("hub")) == 5
    friends = [f"f{i:02d}" for i, ok in enumerate(outcomes[:20]) if ok]
    for friend in friends:
        assert await database.get_list(friend) == ["hub"]
    assert len(friends) + sum(outcomes[20:]) == 5


# Migrations and failures


async def test_migrate_is_idempotent(database_url: str, database: Database) -> None:
    await migrate(database_url)
    await migrate(database_url)
    await database.upsert_statuses([status("a", 1)])
    assert await database.get_status("a") is not None
    await database.ping()


async def test_sqlite_connection_settings(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'settings.db'}"
    await migrate(url)
    db = Database.connect(url)
    try:
        async with db.engine.connect() as conn:
            pragmas = [
                (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar_one()
                for name in ("journal_mode", "busy_timeout", "foreign_keys")
            ]
    finally:
        await db.close()
    assert pragmas == ["wal", 5000, 0]


async def test_unreachable_postgres_is_unavailable() -> None:
    db = Database.connect("postgresql+asyncpg://postgres@127.0.0.1:1/buddycast")
    try:
        with pytest.raises(Unavailable, match="database unavailable"):
            await db.ping()
        with pytest.raises(Unavailable):
            await db.add_edge("a", "b", 10, 1)
    finally:
        await db.close()


async def test_unopenable_sqlite_is_unavailable(tmp_path: Path) -> None:
    db = Database.connect(f"sqlite+aiosqlite:///{tmp_path}/missing/dir/x.db")
    try:
        with pytest.raises(Unavailable, match="database unavailable"):
            await db.get_list("a")
    finally:
        await db.close()
        # After a failed connect aiosqlite stops its worker thread without waiting for it
        # (omnilib/aiosqlite#241): let it finish while the event loop is still open.
        for worker in threading.enumerate():
            if "_connection_worker_thread" in worker.name:
                await asyncio.to_thread(worker.join, 5)
