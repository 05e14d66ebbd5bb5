"""A session's outbox and writer: snapshot first, coalescing per subject, order, bounds.

PROTOCOL.md: the snapshot is the second frame (the first the outbox sends); afterwards a
session sees only increasing versions per subject, intermediate ones may be coalesced but
never the latest, and control frames (ack, list) keep their place after earlier statuses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import orjson
import pytest
from aiohttp import WSMsgType
from prometheus_client import REGISTRY

from service.domain import Presence, Status
from service.node.session import DIRECT_WRITE_LIMIT, MAX_CONTROL_BYTES, CachedItem, Session
from service.protocol import (
    ack_frame,
    list_frame,
    snapshot_frame,
    status_frame,
    websocket_text_frame,
)
from tests.unit.fakes import FakeTransport, FakeWS

MakeSession = Callable[[FakeWS], Session]


@pytest.fixture
async def make_session() -> AsyncIterator[MakeSession]:
    made: list[Session] = []

    def make(ws: FakeWS) -> Session:
        session = Session(f"s{len(made)}", "alice", cast(Any, ws))
        made.append(session)
        return session

    yield make
    for session in made:
        await session.stop_writer()


async def settle() -> None:
    """Let the writer task run until it waits again."""
    for _ in range(20):
        await asyncio.sleep(0)


def cached(user: str, version: int) -> CachedItem:
    item = Status(user, Presence.ONLINE, f"v{version}", None, version, 1_764_160_000_000, True)
    watcher = item.watcher_item()
    return CachedItem(watcher, orjson.dumps(watcher), 0)


def snapshot(*users: str) -> bytes:
    return snapshot_frame(orjson.dumps(Status(u).watcher_item()) for u in users)


def versions(frame: Any) -> dict[str, int]:
    return {item["user"]: item["version"] for item in frame["items"]}


def coalesced_total() -> float:
    return REGISTRY.get_sample_value("buddycast_outbox_coalesced_total") or 0.0


# ----- the snapshot ---------------------------------------------------------------------


async def test_start_sends_the_snapshot_first(make_session: MakeSession) -> None:
    ws = FakeWS()
    session = make_session(ws)
    snap = snapshot("bob", "carol")
    session.start(snap)
    await settle()
    assert ws.frames == [snap]
    assert ws.opcodes == [WSMsgType.TEXT]


HELLO = b'{"type":"hello"}'


def upgraded(make_session: MakeSession) -> tuple[Session, FakeWS, FakeTransport]:
    """A session with its socket's transport, which takes direct writes."""
    ws, transport = FakeWS(), FakeTransport()
    session = make_session(ws)
    session.transport = cast(Any, transport)
    return session, ws, transport


async def test_start_writes_hello_and_snapshot_at_once_to_an_idle_socket(
    make_session: MakeSession,
) -> None:
    session, ws, transport = upgraded(make_session)
    snap = snapshot("bob")
    session.start(HELLO, snap)
    await settle()
    assert transport.writes == [websocket_text_frame(HELLO) + websocket_text_frame(snap)]
    assert ws.frames == [] and session.writer is None


async def test_start_queues_hello_and_snapshot_ahead_when_the_socket_is_busy(
    make_session: MakeSession,
) -> None:
    session, ws, transport = upgraded(make_session)
    transport.buffered = DIRECT_WRITE_LIMIT  # the socket is not keeping up
    snap = snapshot("bob")
    session.start(HELLO, snap)
    await settle()
    assert transport.writes == [] and ws.frames == [HELLO, snap]


async def test_start_puts_hello_and_snapshot_before_frames_queued_while_loading(
    make_session: MakeSession,
) -> None:
    session, ws, transport = upgraded(make_session)
    listed = list_frame([], ["bob"])
    session.push_control(listed)
    snap = snapshot()
    session.start(HELLO, snap)
    await settle()
    assert transport.writes == [] and ws.frames == [HELLO, snap, listed]


async def test_start_drops_statuses_queued_while_loading(make_session: MakeSession) -> None:
    ws = FakeWS()
    session = make_session(ws)
    session.push_status("bob", cached("bob", 1))
    session.push_status("carol", cached("carol", 5))
    await settle()
    assert ws.frames == []  # nothing leaves before the snapshot
    snap = snapshot("bob", "carol")
    session.start(snap)
    await settle()
    assert ws.frames == [snap]
    assert session.pending == {}


async def test_snapshot_goes_ahead_of_control_frames_queued_before_start(
    make_session: MakeSession,
) -> None:
    ws = FakeWS()
    session = make_session(ws)
    listed = list_frame([], ["dave"])
    assert session.push_control(listed)
    session.push_status("bob", cached("bob", 1))
    snap = snapshot("bob")
    session.start(snap)
    await settle()
    assert ws.frames == [snap, listed]


async def test_statuses_after_start_follow_the_snapshot(make_session: MakeSession) -> None:
    ws = FakeWS()
    session = make_session(ws)
    snap = snapshot("bob")
    session.start(snap)
    session.push_status("bob", cached("bob", 2))
    await settle()
    assert ws.frames[0] == snap
    assert ws.decoded()[1] == {"type": "status", "items": [orjson.loads(cached("bob", 2).data)]}
    assert len(ws.frames) == 2


# ----- coalescing -----------------------------------------------------------------------


async def test_push_status_coalesces_per_subject_keeping_the_newest(
    make_session: MakeSession,
) -> None:
    ws = FakeWS()
    ws.gate = asyncio.Event()
    session = make_session(ws)
    session.start(snapshot("bob", "carol"))
    await settle()  # the writer is now stuck sending the snapshot
    before = coalesced_total()
    for version in (1, 2, 3):
        session.push_status("bob", cached("bob", version))
    session.push_status("carol", cached("carol", 7))
    assert set(session.pending) == {"bob", "carol"}
    assert session.pending["bob"].version == 3
    assert coalesced_total() - before == 2
    ws.gate.set()
    await settle()
    frames = ws.decoded()
    assert [f["type"] for f in frames] == ["snapshot", "status"]
    assert versions(frames[1]) == {"bob": 3, "carol": 7}
    assert len(frames[1]["items"]) == 2
    assert frames[1]["items"][0] == orjson.loads(cached("bob", 3).data)


async def test_a_single_pending_item_is_sent_as_a_status_frame_of_its_encoded_item(
    make_session: MakeSession,
) -> None:
    ws = FakeWS()
    session = make_session(ws)
    session.start(snapshot())
    await settle()
    item = cached("bob", 4)
    session.push_status("bob", item)
    await settle()
    assert ws.frames[-1] == status_frame((item.data,))
    assert orjson.loads(ws.frames[-1]) == {"type": "status", "items": [orjson.loads(item.data)]}


async def test_versions_only_increase_per_subject(make_session: MakeSession) -> None:
    ws = FakeWS()
    session = make_session(ws)
    session.start(snapshot("bob", "carol"))
    for version in range(1, 30):
        session.push_status("bob", cached("bob", version))
        if version % 3 == 0:
            session.push_status("carol", cached("carol", version))
        if version % 4 == 0:
            await settle()
        if version % 7 == 0:
            session.push_control(
                ack_frame(f"r{version}", orjson.loads(cached("alice", version).data))
            )
    await settle()
    seen: dict[str, list[int]] = {}
    for frame in ws.decoded()[1:]:
        if frame["type"] == "status":
            for user, version in versions(frame).items():
                seen.setdefault(user, []).append(version)
    assert seen["bob"] == sorted(set(seen["bob"]))
    assert seen["carol"] == sorted(set(seen["carol"]))
    assert seen["bob"][-1] == 29  # the latest is never dropped
    assert seen["carol"][-1] == 27


# ----- control frames -------------------------------------------------------------------


async def test_push_control_flushes_pending_statuses_first(make_session: MakeSession) -> None:
    ws = FakeWS()
    session = make_session(ws)
    snap = snapshot("bob", "carol")
    session.start(snap)
    await settle()
    session.push_status("bob", cached("bob", 1))
    session.push_status("carol", cached("carol", 1))
    ack = ack_frame("r1", orjson.loads(cached("alice", 9).data))
    assert session.push_control(ack)
    assert session.pending == {}
    session.push_status("bob", cached("bob", 2))
    await settle()
    frames = ws.decoded()
    assert [f["type"] for f in frames] == ["snapshot", "status", "ack", "status"]
    assert versions(frames[1]) == {"bob": 1, "carol": 1}
    assert versions(frames[3]) == {"bob": 2}
    assert ws.frames[2] == ack


async def test_push_control_keeps_order_while_the_writer_is_busy(
    make_session: MakeSession,
) -> None:
    ws = FakeWS()
    ws.gate = asyncio.Event()
    session = make_session(ws)
    session.start(snapshot("bob"))
    await settle()
    session.push_status("bob", cached("bob", 1))
    listed = list_frame([cached("carol", 3).data], [])
    assert session.push_control(listed)
    session.push_status("bob", cached("bob", 2))
    session.push_status("bob", cached("bob", 3))
    ws.gate.set()
    await settle()
    frames = ws.decoded()
    assert [f["type"] for f in frames] == ["snapshot", "status", "list", "status"]
    assert versions(frames[1]) == {"bob": 1}
    assert versions(frames[3]) == {"bob": 3}


async def test_push_control_without_pending_sends_just_the_frame(
    make_session: MakeSession,
) -> None:
    ws = FakeWS()
    session = make_session(ws)
    session.start(snapshot())
    await settle()
    pong = b'{"type":"pong","ref":"p"}'
    assert session.push_control(pong)
    await settle()
    assert ws.frames[1:] == [pong]
    assert all(op is WSMsgType.TEXT for op in ws.opcodes)


def test_control_byte_bound() -> None:
    session = Session("s", "alice", cast(Any, FakeWS()))
    assert session.push_control(b"x" * (MAX_CONTROL_BYTES - 10))
    assert session.push_control(b"y" * 10)  # exactly at the bound
    assert session.control_bytes == MAX_CONTROL_BYTES
    assert not session.push_control(b"z")


async def test_flushed_statuses_count_toward_the_bound(make_session: MakeSession) -> None:
    ws = FakeWS()
    ws.gate = asyncio.Event()
    session = make_session(ws)
    session.start(snapshot())
    await settle()  # the snapshot is in flight: no longer counted
    assert session.control_bytes == 0
    session.push_status("bob", cached("bob", 1))
    frame_size = len(status_frame((cached("bob", 1).data,)))
    filler = b"f" * (MAX_CONTROL_BYTES - frame_size)
    assert session.push_control(filler)
    assert session.control_bytes == MAX_CONTROL_BYTES
    assert not session.push_control(b"!")


async def test_control_bytes_drain_back_to_zero(make_session: MakeSession) -> None:
    ws = FakeWS()
    session = make_session(ws)
    session.start(snapshot("bob"))
    session.push_status("bob", cached("bob", 1))
    session.push_control(b"a" * 1000)
    session.push_control(b"b" * 2000)
    await settle()
    assert session.control_bytes == 0
    assert len(ws.frames) == 4


# ----- the writer -----------------------------------------------------------------------


async def test_stalled_for_measures_a_stuck_send(make_session: MakeSession) -> None:
    ws = FakeWS()
    ws.gate = asyncio.Event()
    session = make_session(ws)
    assert session.stalled_for(time.monotonic()) == 0.0
    session.start(snapshot())
    await settle()
    assert session.stalled_for(time.monotonic() + 5) >= 5
    ws.gate.set()
    await settle()
    assert session.stalled_for(time.monotonic() + 5) == 0.0


@pytest.mark.parametrize("error", [ConnectionResetError("gone"), RuntimeError("closing")])
async def test_writer_stops_when_the_socket_fails(
    make_session: MakeSession, error: BaseException
) -> None:
    ws = FakeWS()
    ws.fail = error
    session = make_session(ws)
    session.start(snapshot())
    await settle()
    assert session.closed
    assert session.writer is None
    assert session.stalled_for(time.monotonic()) == 0.0


async def test_stop_writer_cancels_a_blocked_send(make_session: MakeSession) -> None:
    ws = FakeWS()
    ws.gate = asyncio.Event()
    session = make_session(ws)
    session.start(snapshot())
    await settle()
    writer = session.writer
    await asyncio.wait_for(session.stop_writer(), timeout=2)
    assert session.closed
    assert writer is not None and writer.done()
    assert session.writer is None
    session.push_status("bob", cached("bob", 1))
    await settle()
    assert ws.frames == []


async def test_an_idle_session_holds_no_writer_and_no_frame(make_session: MakeSession) -> None:
    ws = FakeWS()
    session = make_session(ws)
    session.start(snapshot("bob"))
    await settle()
    # The writer ends once the outbox is empty: nothing of the snapshot stays referenced.
    assert session.writer is None
    session.push_control(ack_frame("r1", orjson.loads(cached("alice", 1).data)))
    assert session.writer is not None  # a push starts a new one
    await settle()
    assert session.writer is None
    assert session.control == [] and session.control_bytes == 0
    assert [f["type"] for f in ws.decoded()] == ["snapshot", "ack"]


async def test_drain_waits_for_the_writer(make_session: MakeSession) -> None:
    ws = FakeWS()
    ws.gate = asyncio.Event()
    session = make_session(ws)
    session.start(snapshot())
    session.push_control(ack_frame("r1", orjson.loads(cached("alice", 1).data)))
    draining = asyncio.create_task(session.drain(timeout_s=5))
    await settle()
    assert not draining.done()
    ws.gate.set()
    await asyncio.wait_for(draining, timeout=2)
    assert len(ws.frames) == 2
    # Bounded when the client does not read.
    ws.gate.clear()
    session.push_control(ack_frame("r2", orjson.loads(cached("alice", 2).data)))
    started = time.monotonic()
    await session.drain(timeout_s=0.05)
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("text_size", [0, 200, 70_000])  # each WebSocket length form
def test_a_cached_item_reads_its_json_out_of_its_frame(text_size: int) -> None:
    item = Status("bob", Presence.ONLINE, "t" * text_size, None, 3, 1_764_160_000_000, True)
    watcher = item.watcher_item()
    data = orjson.dumps(watcher)
    kept = CachedItem(watcher, data, 0)
    assert bytes(kept.data) == data
    assert kept.wire == websocket_text_frame(status_frame((data,)))
