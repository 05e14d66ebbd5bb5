"""Shard-stream events and node inbox batches: decoding, round trips, malformed entries."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain import Presence, Status
from service.events import (
    InboxBatch,
    ListChange,
    UserDeleted,
    decode_event,
    status_from_hash,
)

STATUS_FIELDS = {
    "k": "s",
    "u": "bob",
    "p": "away",
    "t": "at lunch",
    "a": "https://x/y.png",
    "v": "42",
    "ts": "1764160000123",
    "on": "1",
}


# ----- status events --------------------------------------------------------------------


def test_status_event() -> None:
    assert decode_event(STATUS_FIELDS) == Status(
        user="bob",
        presence=Presence.AWAY,
        text="at lunch",
        avatar="https://x/y.png",
        version=42,
        updated_at=1764160000123,
        visible=True,
    )


def test_status_event_carries_the_life_of_the_user() -> None:
    event = decode_event({**STATUS_FIELDS, "g": "1764160000123456"})
    assert isinstance(event, Status)
    assert event.life == 1764160000123456
    # It never reaches a client.
    assert "life" not in event.watcher_item() and "life" not in event.own_item()


def test_status_event_of_a_user_gone_offline() -> None:
    event = decode_event({**STATUS_FIELDS, "on": "0"})
    assert isinstance(event, Status)
    assert event.visible is False
    assert event.watcher_item()["presence"] == "offline"
    assert event.watcher_item()["text"] == ""
    assert event.own_item()["presence"] == "away"


def test_status_event_with_empty_avatar_and_no_text() -> None:
    fields = {k: v for k, v in STATUS_FIELDS.items() if k != "t"}
    event = decode_event({**fields, "a": ""})
    assert isinstance(event, Status)
    assert event.avatar is None
    assert event.text == ""


def test_status_event_of_an_invisible_user() -> None:
    event = decode_event({**STATUS_FIELDS, "p": "invisible"})
    assert isinstance(event, Status)
    assert event.presence is Presence.INVISIBLE
    assert event.watcher_item()["presence"] == "offline"


# ----- list-change events ---------------------------------------------------------------


def test_list_change_event() -> None:
    gone_item = Status("dave", version=9, updated_at=5).watcher_item()
    event = decode_event(
        {
            "k": "l",
            "u": "alice",
            "add": '["bob","carol"]',
            "rm": '["dave"]',
            "gone": orjson.dumps({"dave": [1764160000123456, gone_item]}).decode(),
        }
    )
    assert event == ListChange(
        "alice", ("bob", "carol"), ("dave",), {"dave": (1764160000123456, gone_item)}
    )


@pytest.mark.parametrize("empty", ["{}", "[]", ""])
def test_empty_lua_tables_decode_to_empty_tuples(empty: str) -> None:
    # Lua's cjson encodes an empty table as `{}`, not `[]`.
    event = decode_event({"k": "l", "u": "alice", "add": empty, "rm": empty, "gone": empty})
    assert event == ListChange("alice", (), (), {})
    assert isinstance(event, ListChange)
    assert event.added == ()
    assert event.removed == ()


def test_list_change_event_with_absent_fields() -> None:
    assert decode_event({"k": "l", "u": "alice"}) == ListChange("alice")


def test_list_change_with_only_an_addition() -> None:
    event = decode_event({"k": "l", "u": "alice", "add": '["bob"]', "rm": "{}", "gone": "{}"})
    assert event == ListChange("alice", ("bob",), (), {})


# ----- user-deleted events --------------------------------------------------------------


def test_user_deleted_event() -> None:
    event = decode_event({"k": "x", "u": "bob", "n": '["node-1","node-2"]'})
    assert event == UserDeleted("bob", ("node-1", "node-2"))


@pytest.mark.parametrize("empty", ["{}", "[]"])
def test_user_deleted_without_nodes(empty: str) -> None:
    assert decode_event({"k": "x", "u": "bob", "n": empty}) == UserDeleted("bob", ())
    assert decode_event({"k": "x", "u": "bob"}) == UserDeleted("bob", ())


# ----- malformed ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"k": "?", "u": "bob"},
        {"u": "bob"},
        {**STATUS_FIELDS, "p": "offline"},
        {**STATUS_FIELDS, "p": "sleeping"},
        {**STATUS_FIELDS, "v": "forty-two"},
        {**STATUS_FIELDS, "ts": "soon"},
        {**STATUS_FIELDS, "v": ""},
        {"k": "l", "u": "alice", "add": "[not json"},
        {"k": "l", "u": "alice", "gone": "{broken"},
        {"k": "x", "u": "bob", "n": "nodes"},
    ],
)
def test_malformed_event_raises_value_error(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        decode_event(fields)


@pytest.mark.parametrize("missing", ["u", "p", "v", "ts"])
def test_status_event_missing_a_required_field(missing: str) -> None:
    fields = {k: v for k, v in STATUS_FIELDS.items() if k != missing}
    with pytest.raises(KeyError):
        decode_event(fields)


@pytest.mark.parametrize("kind", ["l", "x"])
def test_other_events_need_a_user(kind: str) -> None:
    with pytest.raises(KeyError):
        decode_event({"k": kind})


# ----- status hashes --------------------------------------------------------------------


def test_status_from_hash() -> None:
    fields = {"p": "busy", "t": "call", "a": "http://x/a.png", "v": "3", "ts": "99", "on": "1"}
    assert status_from_hash("bob", fields) == Status(
        "bob", Presence.BUSY, "call", "http://x/a.png", 3, 99, True
    )


@pytest.mark.parametrize("fields", [{}, {"p": "busy", "t": "x"}])
def test_absent_status_hash_is_none(fields: dict[str, str]) -> None:
    assert status_from_hash("bob", fields) is None


def test_minimal_status_hash_has_defaults() -> None:
    assert status_from_hash("bob", {"v": "1"}) == Status(
        "bob", Presence.ONLINE, "", None, 1, 0, False
    )
    assert status_from_hash("bob", {"v": "1", "p": "", "a": "", "ts": "", "on": "0"}) == Status(
        "bob", Presence.ONLINE, "", None, 1, 0, False
    )


def test_malformed_status_hash_raises_value_error() -> None:
    with pytest.raises(ValueError):
        status_from_hash("bob", {"v": "x"})
    with pytest.raises(ValueError):
        status_from_hash("bob", {"v": "1", "p": "offline"})


# ----- inbox batches --------------------------------------------------------------------


def test_inbox_batch_round_trip() -> None:
    gone = Status("dave", version=4, updated_at=10).watcher_item()
    batch = InboxBatch(
        items=[(7, Status("bob", Presence.AWAY, "hi", None, 2, 1, True).watcher_item())],
        lists=[
            ListChange("alice", ("bob",), ("dave",), {"dave": (3, gone)}),
            ListChange("carol"),
        ],
        deleted=["dave"],
    )
    data = batch.encode()
    assert isinstance(data, bytes)
    assert InboxBatch.decode(data) == batch
    assert InboxBatch.decode(data.decode()) == batch


def test_empty_inbox_batch_round_trip() -> None:
    assert InboxBatch.decode(InboxBatch().encode()) == InboxBatch()


def test_inbox_batch_missing_parts_decode_empty() -> None:
    assert InboxBatch.decode("{}") == InboxBatch()
    assert InboxBatch.decode('{"x":["bob"]}') == InboxBatch(deleted=["bob"])


def test_inbox_batch_wire_shape() -> None:
    batch = InboxBatch(items=[(5, {"user": "bob"})], lists=[ListChange("a", ("b",))], deleted=["c"])
    assert orjson.loads(batch.encode()) == {
        "s": [[5, {"user": "bob"}]],
        "l": [["a", ["b"], [], {}]],
        "x": ["c"],
    }


def test_malformed_inbox_batch_raises_value_error() -> None:
    with pytest.raises(ValueError):
        InboxBatch.decode(b"not json")


ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.:@-", min_size=1, max_size=12)
items = st.builds(
    lambda user, presence, visible, text, version, ts: Status(
        user, presence, text, None, version, ts, visible
    ).watcher_item(),
    ids,
    st.sampled_from(list(Presence)),
    st.booleans(),
    st.text(max_size=20),
    st.integers(0, 2**53),
    st.integers(0, 2**53),
)
list_changes = st.builds(
    ListChange,
    ids,
    st.lists(ids, max_size=4).map(tuple),
    st.lists(ids, max_size=4).map(tuple),
    st.dictionaries(ids, st.tuples(st.integers(0, 2**53), items), max_size=2),
)


@given(
    st.lists(st.tuples(st.integers(0, 2**53), items), max_size=5),
    st.lists(list_changes, max_size=3),
    st.lists(ids, max_size=3),
)
def test_inbox_batch_round_trip_property(
    batch_items: list[tuple[int, dict[str, Any]]], lists: list[ListChange], deleted: list[str]
) -> None:
    batch = InboxBatch(items=batch_items, lists=lists, deleted=deleted)
    assert InboxBatch.decode(batch.encode()) == batch
