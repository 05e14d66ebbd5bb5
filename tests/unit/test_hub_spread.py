"""A subject with many local watchers reaches them a chunk per loop pass (the spread).

What must hold while a spread runs (PROTOCOL.md, delivery guarantees): every watcher
ends with the latest item, versions only increase per session (never repeated, also
when a snapshot or a list frame already carried the item), and a session that left
the list meanwhile gets nothing more.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from service.config import Settings
from service.domain import Presence, Status
from service.node.hub import SPREAD_CHUNK, Hub
from service.node.session import Session
from service.protocol import snapshot_frame
from tests.unit.fakes import FakeWS

CELEBRITY = "star"
WATCHERS = 2 * SPREAD_CHUNK + 100  # three chunks


def status(version: int, user: str = CELEBRITY) -> dict[str, Any]:
    item = Status(user, Presence.ONLINE, f"v{version}", None, version, 1_764_160_000_000, True)
    return item.watcher_item()


class Node:
    """A hub without Redis, its sessions on fake sockets, all watching the celebrity."""

    def __init__(self, watchers: int) -> None:
        store = cast(Any, SimpleNamespace(redis=None, keys=lambda user: None, scripts=None))
        self.hub = Hub(Settings(node_id="n1"), store, None)
        self.sockets: dict[Session, FakeWS] = {}
        for n in range(watchers):
            ws = FakeWS()
            session = Session(f"s{n}", f"u{n}", cast(Any, ws))
            session.buddies = (CELEBRITY,)
            session.start(snapshot_frame([]))
            self.hub._add_watcher(CELEBRITY, session)
            self.sockets[session] = ws

    def versions(self, session: Session) -> list[int]:
        """The celebrity's versions as `session` received them, snapshots included."""
        return [
            item["version"]
            for frame in self.sockets[session].decoded()
            for item in frame["items"]
            if item["user"] == CELEBRITY
        ]

    def reached(self, version: int) -> int:
        return sum(version in self.versions(s) for s in self.sockets)

    async def settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    async def close(self) -> None:
        for session in self.sockets:
            await session.stop_writer()


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    made = Node(WATCHERS)
    await made.settle()
    yield made
    await made.close()


async def test_a_large_fanout_goes_a_chunk_per_pass(node: Node) -> None:
    node.hub.offer(status(1), 0)
    assert node.reached(1) == 0  # nothing written inside the offer
    await asyncio.sleep(0)  # the spread's first pass
    await asyncio.sleep(0)  # the writers it woke
    assert 0 < node.reached(1) < WATCHERS
    await node.settle()
    assert all(node.versions(s) == [1] for s in node.sockets)
    assert not node.hub._spreads


async def test_watchers_are_a_list_up_to_a_chunk_and_a_dict_beyond() -> None:
    small = Node(SPREAD_CHUNK)
    sessions = list(small.sockets)
    assert small.hub.watchers[CELEBRITY] == sessions
    extra = Session("extra", "extra", cast(Any, FakeWS()))
    small.hub._add_watcher(CELEBRITY, extra)
    assert small.hub.watchers[CELEBRITY] == dict.fromkeys([*sessions, extra])
    for session in [extra, *sessions[:-1]]:
        small.hub._unwatch(session, [CELEBRITY])
        assert CELEBRITY in small.hub.watchers
    small.hub._unwatch(sessions[-1], [CELEBRITY])
    assert CELEBRITY not in small.hub.watchers
    await small.close()


async def test_a_small_watcher_list_forgets_only_the_session_that_left() -> None:
    small = Node(3)
    first, second, third = small.sockets
    small.hub._unwatch(second, [CELEBRITY])
    small.hub._unwatch(second, [CELEBRITY])  # twice: nothing more
    assert small.hub.watchers[CELEBRITY] == [first, third]
    small.hub.offer(status(1), 0)
    await small.settle()
    assert [small.versions(s) for s in (first, second, third)] == [[1], [], [1]]
    await small.close()


async def test_a_small_fanout_is_written_at_once() -> None:
    small = Node(SPREAD_CHUNK)
    await small.settle()
    small.hub.offer(status(1), 0)
    await asyncio.sleep(0)
    assert small.reached(1) == SPREAD_CHUNK
    assert not small.hub._spreads
    await small.close()


async def test_a_newer_item_midway_reaches_everyone_and_nothing_repeats(node: Node) -> None:
    node.hub.offer(status(1), 0)
    await asyncio.sleep(0)
    node.hub.offer(status(2), 0)
    node.hub.offer(status(3), 0)
    await node.settle()
    for session in node.sockets:
        seen = node.versions(session)
        assert seen[-1] == 3
        assert seen == sorted(set(seen)), seen


async def test_a_snapshot_midway_is_not_followed_by_the_same_item(node: Node) -> None:
    node.hub.offer(status(1), 0)
    last = list(node.sockets)[-1]
    last.push_control(node.hub._snapshot(last))  # a resync before the spread reaches it
    await node.settle()
    assert node.versions(last) == [1]
    assert node.reached(1) == WATCHERS


async def test_a_session_that_leaves_the_list_midway_gets_nothing_more(node: Node) -> None:
    node.hub.offer(status(1), 0)
    await asyncio.sleep(0)
    last = list(node.sockets)[-1]
    node.hub._unwatch(last, [CELEBRITY])
    await node.settle()
    assert node.versions(last) == []
    assert node.reached(1) == WATCHERS - 1


async def test_settle_gives_the_latest_item_once(node: Node) -> None:
    node.hub.offer(status(1), 0)
    last = list(node.sockets)[-1]
    node.hub._settle(last, CELEBRITY)  # a deleted user's final item, before its list frame
    await node.settle()
    assert node.versions(last) == [1]
    assert node.reached(1) == WATCHERS


async def test_the_last_watcher_leaving_ends_the_spread(node: Node) -> None:
    node.hub.offer(status(1), 0)
    for session in node.sockets:
        node.hub._unwatch(session, [CELEBRITY])
    await node.settle()
    assert node.reached(1) == 0
    assert not node.hub._spreads and CELEBRITY not in node.hub.latest


async def test_settle_gives_nothing_to_a_session_that_no_longer_watches(node: Node) -> None:
    node.hub.offer(status(1), 0)
    last = list(node.sockets)[-1]
    node.hub._unwatch(last, [CELEBRITY])  # an ended life took the subject out of its list
    node.hub._settle(last, CELEBRITY)
    await node.settle()
    assert node.versions(last) == []
