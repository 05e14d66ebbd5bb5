"""Client frames decoded and validated, server frames encoded (PROTOCOL.md: WebSocket)."""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain import Presence, Status, StatusPatch
from service.errors import BadRequest
from service.protocol import (
    FRAMED_STATUS_ITEM_END,
    MAX_REF_CHARS,
    ClientFrame,
    FrameError,
    ack_frame,
    decode_client_frame,
    encode_item,
    error_body,
    error_frame,
    framed_status,
    framed_status_item_start,
    hello_frame,
    list_frame,
    pong_frame,
    snapshot_frame,
    status_frame,
    websocket_text_frame,
)

ITEM_BOB = {
    "user": "bob",
    "presence": "online",
    "text": "at lunch",
    "avatar": "https://x/y.png",
    "version": 42,
    "updated_at": 1764160000123,
}
ITEM_CAROL = {
    "user": "carol",
    "presence": "offline",
    "text": "",
    "avatar": None,
    "version": 0,
    "updated_at": 0,
}


def frame(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def refused(data: bytes | str) -> FrameError:
    with pytest.raises(FrameError) as info:
        decode_client_frame(data)
    assert info.value.code == "bad_request"
    return info.value


# ----- decoding: refusals ---------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    ["", " ", "{", "nope", "{'op': 'ping'}", '{"op":"ping",}', b"\xff\xfe", b"\x00", "NaN"],
)
def test_invalid_json(data: bytes | str) -> None:
    error = refused(data)
    assert error.ref is None
    assert "JSON" in error.message


@pytest.mark.parametrize("data", ["[]", '[{"op":"ping"}]', "1", '"ping"', "null", "true"])
def test_non_object(data: str) -> None:
    assert refused(data).ref is None


@pytest.mark.parametrize(
    "message",
    [
        {"op": "subscribe", "ref": "r1"},
        {"op": "PING", "ref": "r1"},
        {"op": "", "ref": "r1"},
        {"op": None, "ref": "r1"},
        {"op": 1, "ref": "r1"},
        {"op": ["ping"], "ref": "r1"},
        {"ref": "r1"},
    ],
)
def test_unknown_op_echoes_the_ref(message: dict[str, Any]) -> None:
    assert refused(orjson.dumps(message)).ref == "r1"


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"op": "ping", "ref": "r1", "x": 1}, "x"),
        ({"op": "resync", "ref": "r1", "text": "hi"}, "text"),
        ({"op": "ping", "ref": "r1", "presence": "away"}, "presence"),
        ({"op": "set_status", "ref": "r1", "presence": "away", "mood": "ok"}, "mood"),
        ({"op": "set_status", "ref": "r1", "user": "mallory", "text": "x"}, "user"),
    ],
)
def test_unknown_field_echoes_the_ref_and_names_it(message: dict[str, Any], field: str) -> None:
    error = refused(orjson.dumps(message))
    assert error.ref == "r1"
    assert field in error.message


@pytest.mark.parametrize("ref", [1, 0, 1.5, True, False, [], ["r1"], {}, {"r": 1}])
def test_ref_of_another_type_is_bad_request_with_null_ref(ref: Any) -> None:
    assert refused(frame(op="ping", ref=ref)).ref is None


def test_ref_longer_than_64_characters_is_bad_request_with_null_ref() -> None:
    assert MAX_REF_CHARS == 64
    assert refused(frame(op="ping", ref="r" * 65)).ref is None
    assert refused(frame(op="ping", ref="😀" * 65)).ref is None


def test_bad_ref_wins_over_other_errors() -> None:
    assert refused(frame(op="nope", ref=7, extra=1)).ref is None


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"presence": "offline"},
        {"presence": "INVISIBLE"},
        {"presence": None},
        {"presence": 1},
        {"text": None},
        {"text": "a" * 281},
        {"text": 280},
        {"avatar": "ftp://x/y.png"},
        {"avatar": "https://x/" + "a" * 2048},
        {"avatar": 1},
        {"presence": "away", "avatar": "javascript:alert(1)"},
    ],
)
def test_bad_set_status_echoes_the_ref(fields: dict[str, Any]) -> None:
    assert refused(frame(op="set_status", ref="r-42", **fields)).ref == "r-42"


def test_bad_set_status_without_ref_has_null_ref() -> None:
    assert refused(frame(op="set_status", presence="offline")).ref is None


def test_set_status_needs_a_non_empty_subset() -> None:
    error = refused(frame(op="set_status", ref="r1"))
    assert error.ref == "r1"
    assert isinstance(error, BadRequest)


# ----- decoding: accepted frames --------------------------------------------------------


@pytest.mark.parametrize("op", ["ping", "resync"])
def test_ping_and_resync(op: str) -> None:
    assert decode_client_frame(frame(op=op, ref="abc")) == ClientFrame(op, "abc")
    assert decode_client_frame(frame(op=op)) == ClientFrame(op, None)
    assert decode_client_frame(frame(op=op, ref=None)) == ClientFrame(op, None)


@pytest.mark.parametrize("ref", ["", "r", "r" * 64, "😀" * 64, "ünï cødé ref"])
def test_valid_refs_are_kept(ref: str) -> None:
    assert decode_client_frame(frame(op="ping", ref=ref)).ref == ref


def test_text_and_bytes_are_both_accepted() -> None:
    text = '{"op":"ping","ref":"x"}'
    assert decode_client_frame(text) == decode_client_frame(text.encode())


@pytest.mark.parametrize(
    ("fields", "patch"),
    [
        ({"presence": "away"}, StatusPatch(presence=Presence.AWAY)),
        ({"presence": "invisible"}, StatusPatch(presence=Presence.INVISIBLE)),
        ({"text": ""}, StatusPatch(text="")),
        ({"text": "😀" * 280}, StatusPatch(text="😀" * 280)),
        ({"avatar": "https://x/y.png"}, StatusPatch(avatar="https://x/y.png", set_avatar=True)),
        ({"avatar": None}, StatusPatch(avatar=None, set_avatar=True)),
        (
            {"presence": "busy", "text": "call", "avatar": None},
            StatusPatch(Presence.BUSY, "call", None, True),
        ),
    ],
)
def test_set_status_subsets(fields: dict[str, Any], patch: StatusPatch) -> None:
    decoded = decode_client_frame(frame(op="set_status", ref="s1", **fields))
    assert decoded == ClientFrame("set_status", "s1", patch)


def test_escaped_surrogate_pair_is_one_emoji() -> None:
    decoded = decode_client_frame('{"op":"set_status","text":"\\ud83d\\ude00"}')
    assert decoded.patch is not None
    assert decoded.patch.text == "😀"


# ----- decoding: properties -------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=80)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
field_names = st.sampled_from(["op", "ref", "presence", "text", "avatar", "user", "x"])
field_values = (
    st.sampled_from(
        ["ping", "resync", "set_status", "online", "away", "busy", "invisible", "offline"]
    )
    | st.sampled_from(["https://x/y.png", "http://h/a", "ftp://h/a", "", "r" * 64, "r" * 65])
    | json_values
)
messages = st.dictionaries(field_names, field_values, max_size=5)


def check_outcome(data: bytes | str) -> None:
    try:
        result = decode_client_frame(data)
    except FrameError as exc:
        assert exc.ref is None or (isinstance(exc.ref, str) and len(exc.ref) <= 64)
        orjson.loads(error_frame(exc.ref, exc.code, exc.message))
    else:
        assert isinstance(result, ClientFrame)
        # Whatever is accepted can be answered: the ack and pong frames encode.
        orjson.loads(pong_frame(result.ref))
        if result.patch is not None:
            patched = Status("me").with_patch(result.patch)
            orjson.loads(ack_frame(result.ref, patched.own_item()))


@settings(max_examples=300)
@given(st.text())
def test_arbitrary_text_gives_a_frame_or_frame_error(data: str) -> None:
    check_outcome(data)


@settings(max_examples=300)
@given(st.binary())
def test_arbitrary_bytes_give_a_frame_or_frame_error(data: bytes) -> None:
    check_outcome(data)


@settings(max_examples=300)
@given(json_values)
def test_arbitrary_json_gives_a_frame_or_frame_error(value: Any) -> None:
    check_outcome(orjson.dumps(value))


@settings(max_examples=400)
@given(messages)
def test_frame_like_objects_follow_the_ref_rule(message: dict[str, Any]) -> None:
    data = orjson.dumps(message)
    check_outcome(data)
    ref = message.get("ref")
    ref_ok = ref is None or (isinstance(ref, str) and len(ref) <= 64)
    try:
        result = decode_client_frame(data)
    except FrameError as exc:
        # A readable ref is echoed; any other ref is itself the error, with ref null.
        assert exc.ref == (ref if ref_ok else None)
    else:
        assert ref_ok
        assert result.ref == ref
        assert result.op in {"ping", "resync", "set_status"}
        assert set(message) <= {"op", "ref", "presence", "text", "avatar"}
        if result.op == "set_status":
            assert result.patch is not None
            assert set(message) & {"presence", "text", "avatar"}
        else:
            assert set(message) <= {"op", "ref"}


# ----- encoding -------------------------------------------------------------------------


def parse(data: bytes) -> Any:
    assert isinstance(data, bytes)
    return orjson.loads(data)


def test_hello_frame() -> None:
    assert parse(hello_frame("alice", "s1", "node-1", 20.0)) == {
        "type": "hello",
        "user": "alice",
        "session": "s1",
        "node": "node-1",
        "heartbeat_s": 20,
    }


def test_hello_heartbeat_keeps_fractions() -> None:
    assert parse(hello_frame("alice", "s1", "n", 0.5))["heartbeat_s"] == 0.5
    assert isinstance(parse(hello_frame("alice", "s1", "n", 20.0))["heartbeat_s"], int)


def test_snapshot_frame() -> None:
    data = snapshot_frame([encode_item(ITEM_BOB), encode_item(ITEM_CAROL)])
    assert parse(data) == {"type": "snapshot", "items": [ITEM_BOB, ITEM_CAROL]}


def test_empty_snapshot_frame() -> None:
    assert parse(snapshot_frame([])) == {"type": "snapshot", "items": []}


def test_snapshot_frame_from_a_generator() -> None:
    items = (encode_item(i) for i in (ITEM_BOB, ITEM_CAROL))
    assert parse(snapshot_frame(items))["items"] == [ITEM_BOB, ITEM_CAROL]


def test_status_frame() -> None:
    assert parse(status_frame([encode_item(ITEM_BOB)])) == {"type": "status", "items": [ITEM_BOB]}
    both = parse(status_frame([encode_item(ITEM_BOB), encode_item(ITEM_CAROL)]))
    assert both == {"type": "status", "items": [ITEM_BOB, ITEM_CAROL]}


def test_list_frame() -> None:
    assert parse(list_frame([encode_item(ITEM_BOB)], ["carol", "dave"])) == {
        "type": "list",
        "added": [ITEM_BOB],
        "removed": ["carol", "dave"],
    }


def test_list_frame_with_only_removals() -> None:
    assert parse(list_frame([], ["carol"])) == {"type": "list", "added": [], "removed": ["carol"]}
    assert parse(list_frame([encode_item(ITEM_CAROL)], [])) == {
        "type": "list",
        "added": [ITEM_CAROL],
        "removed": [],
    }


def test_ack_frame_carries_the_own_view() -> None:
    own = Status("bob", Presence.INVISIBLE, "hidden", None, 7, 1000, True).own_item()
    assert parse(ack_frame("r1", own)) == {
        "type": "ack",
        "ref": "r1",
        "item": {
            "user": "bob",
            "presence": "invisible",
            "text": "hidden",
            "avatar": None,
            "version": 7,
            "updated_at": 1000,
        },
    }


def test_ack_frame_with_null_ref() -> None:
    assert parse(ack_frame(None, ITEM_BOB)) == {"type": "ack", "ref": None, "item": ITEM_BOB}


def test_pong_frame() -> None:
    assert parse(pong_frame("p1")) == {"type": "pong", "ref": "p1"}
    assert parse(pong_frame(None)) == {"type": "pong", "ref": None}


@pytest.mark.parametrize(
    "code", ["bad_request", "too_large", "rate_limited", "unavailable", "internal"]
)
def test_error_frame(code: str) -> None:
    assert parse(error_frame("e1", code, "what went wrong")) == {
        "type": "error",
        "ref": "e1",
        "code": code,
        "message": "what went wrong",
    }


def test_error_frame_with_null_ref() -> None:
    assert parse(error_frame(None, "bad_request", "m")) == {
        "type": "error",
        "ref": None,
        "code": "bad_request",
        "message": "m",
    }


def test_frame_error_becomes_an_error_frame() -> None:
    error = refused(frame(op="set_status", ref="r7", presence="offline"))
    assert parse(error_frame(error.ref, error.code, error.message)) == {
        "type": "error",
        "ref": "r7",
        "code": "bad_request",
        "message": error.message,
    }


def test_error_body() -> None:
    assert parse(error_body("unauthorized", "token expired")) == {
        "code": "unauthorized",
        "message": "token expired",
    }


def test_encoded_item_is_the_item() -> None:
    assert parse(encode_item(ITEM_BOB)) == ITEM_BOB
    assert parse(encode_item(ITEM_CAROL)) == ITEM_CAROL


def test_frames_are_text_safe_utf8() -> None:
    item = dict(ITEM_BOB, text='"quoted" \\ 😀 \n')
    data = status_frame([encode_item(item)])
    data.decode("utf-8")
    assert parse(data)["items"] == [item]


# ----- WebSocket framing of status frames ----------------------------------------------


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65_535, b"\x81\x7e\xff\xff"),
        (65_536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_websocket_text_frame_header_per_rfc6455(size: int, header: bytes) -> None:
    # FIN + text opcode, no mask bit (a server's frame), 7-bit, 16-bit or 64-bit length.
    payload = b"x" * size
    assert websocket_text_frame(payload) == header + payload


def test_kept_encodings_are_sized_to_their_json() -> None:
    """orjson's own bytes hold 4 KiB or more; cached items and queued frames must not."""
    item = Status("bob", Presence.AWAY, "lunch", None, 3, 1_764_160_000_000, True).watcher_item()
    made: list[bytes] = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        made += [encode_item(item) for _ in range(1000)]
        made += [ack_frame("r", item) for _ in range(1000)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert orjson.loads(made[0]) == item
    assert held / len(made) < 400, f"{held / len(made):.0f} bytes per encoding"


@pytest.mark.parametrize("size", [10, 125, 126, 70_000])
def test_the_item_of_a_framed_status_is_found_whatever_its_header(size: int) -> None:
    item = orjson.dumps({"user": "u", "text": "x" * size})
    wire = framed_status(item)
    assert orjson.loads(wire[wire.index(b"{") :]) == {
        "type": "status",
        "items": [orjson.loads(item)],
    }
    assert wire[framed_status_item_start(wire) : FRAMED_STATUS_ITEM_END] == item
