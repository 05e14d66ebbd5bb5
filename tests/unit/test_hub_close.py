"""Closing sessions on a node: the watcher index stays exact, subjects no session here
watches any more leave the node's interest, and each session is deregistered once,
also when the node's stop and the session's own handler both close it."""

from __future__ import annotations

import asyncio
import random
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from service.config import Settings
from service.node.hub import SPREAD_CHUNK, Hub
from service.node.session import Session
from tests.unit.fakes import FakeWS

SUBJECTS = [f"b{n}" for n in range(1000)]  # most watched by a session or two
POPULAR = "star"  # watched by more sessions than a list holds: its watchers are a dict


class Store:
    """Records the sessions deregistered."""

    def __init__(self) -> None:
        self.redis = None
        self.scripts = None
        self.closed: list[str] = []

    def keys(self, user: str) -> None:
        return None

    async def close_session(self, user: str, session: str, node: str, grace_s: float) -> None:
        self.closed.append(session)


class Interest:
    def __init__(self) -> None:
        self.removed: list[str] = []

    def remove(self, subjects: list[str]) -> None:
        self.removed += subjects


def node(sessions: int, seed: int) -> tuple[Hub, list[Session], Interest]:
    hub = Hub(Settings(node_id="n1"), cast(Any, Store()), None)
    interest = Interest()
    hub.interest = cast(Any, interest)
    rng = random.Random(seed)
    opened = []
    for n in range(sessions):
        session = Session(f"s{n}", f"u{n}", cast(Any, FakeWS()))
        session.buddies = tuple(sorted({*rng.sample(SUBJECTS, rng.randint(0, 4)), POPULAR}))
        hub.sessions[session.id] = session
        hub.own.setdefault(session.user, []).append(session)
        for subject in session.buddies:
            hub._add_watcher(subject, session)
            hub.latest.setdefault(subject, cast(Any, subject))
        opened.append(session)
    return hub, opened, interest


def index_of(sessions: list[Session]) -> dict[str, set[Session]]:
    index: dict[str, set[Session]] = {}
    for session in sessions:
        for subject in session.buddies:
            index.setdefault(subject, set()).add(session)
    return index


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), share=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
def test_closed_sessions_leave_the_index_exact(seed: int, share: float) -> None:
    hub, sessions, interest = node(SPREAD_CHUNK + 20, seed)
    assert isinstance(hub.watchers[POPULAR], dict)
    rng = random.Random(seed)
    gone = [s for s in sessions if rng.random() < share]
    for session in gone:
        asyncio.run(hub.close(session))
    left = [s for s in sessions if s not in gone]
    expected = index_of(left)
    assert {subject: set(w) for subject, w in hub.watchers.items()} == expected
    assert set(hub.latest) == set(expected)
    # Interest is dropped once per subject, when its last local watcher goes.
    assert sorted(interest.removed) == sorted(set(index_of(sessions)) - set(expected))


def test_a_session_closed_by_the_stop_and_by_its_handler_is_deregistered_once() -> None:
    hub, sessions, _ = node(3, seed=1)
    never_indexed = Session("s9", "u9", cast(Any, FakeWS()))  # its upgrade failed

    async def close_all() -> None:
        await asyncio.gather(*(hub.close(s) for s in sessions))  # the node's stop
        await asyncio.gather(*(hub.close(s) for s in sessions))  # each handler's end
        await hub.close(never_indexed)

    asyncio.run(close_all())
    store = cast(Store, hub.store)
    assert sorted(store.closed) == ["s0", "s1", "s2", "s9"]
    assert not hub.sessions and not hub.own and not hub.watchers
