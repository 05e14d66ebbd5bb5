"""The WebSocket wire format: client frames decoded and validated, server frames encoded.

Every frame is a JSON text frame. Items are encoded once (`encode_item`) and spliced into
frames as bytes, so one change is serialized once however many sessions receive it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from service.domain import StatusPatch
from service.errors import BadRequest

MAX_CLIENT_FRAME_BYTES = 8192
MAX_REF_CHARS = 64

_ALLOWED_FIELDS = {
    "set_status": frozenset({"op", "ref", "presence", "text", "avatar"}),
    "ping": frozenset({"op", "ref"}),
    "resync": frozenset({"op", "ref"}),
}


class FrameError(BadRequest):
    """A client frame was refused; `ref` is the request's ref when it was readable."""

    def __init__(self, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.ref = ref


@dataclass(frozen=True, slots=True)
class ClientFrame:
    op: str
    ref: str | None
    patch: StatusPatch | None = None


def _json_object(data: bytes | str, what: str) -> dict[str, Any]:
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"{what} is not valid JSON") from exc
    if not isinstance(message, dict):
        raise FrameError(f"{what} must be a JSON object")
    return message


def decode_client_frame(data: bytes | str) -> ClientFrame:
    """Parse and validate one client text frame; raise `FrameError` with the ref if known."""
    message = _json_object(data, "frame")
    ref = message.get("ref")
    if ref is not None and (not isinstance(ref, str) or len(ref) > MAX_REF_CHARS):
        raise FrameError(f"ref must be a string of at most {MAX_REF_CHARS} characters or null")
    op = message.get("op")
    if not isinstance(op, str) or op not in _ALLOWED_FIELDS:
        raise FrameError("op must be one of set_status, ping, resync", ref)
    unknown = message.keys() - _ALLOWED_FIELDS[op]
    if unknown:
        raise FrameError(f"unknown field {sorted(unknown)[0]!r} for {op}", ref)
    if op != "set_status":
        return ClientFrame(op, ref)
    try:
        patch = StatusPatch.from_fields(message)
    except BadRequest as exc:
        raise FrameError(exc.message, ref) from exc
    return ClientFrame(op, ref, patch)


def decode_status_body(data: bytes) -> StatusPatch:
    """The body of `PUT /v1/users/{user}/status`: `set_status` without `op` and `ref`."""
    body = _json_object(data, "body")
    unknown = body.keys() - _ALLOWED_FIELDS["set_status"] | body.keys() & {"op", "ref"}
    if unknown:
        raise BadRequest(f"unknown field {sorted(unknown)[0]!r}")
    return StatusPatch.from_fields(body)


def _dumps(value: Any) -> bytes:
    """`orjson.dumps`, copied to a buffer of its own size.

    orjson (3.12 on) hands back bytes whose allocation is at least 4 KiB, however short
    the JSON: tracemalloc shows 4,098 bytes held by a 133-byte item. Items kept in a
    node's cache and frames waiting in an outbox would cost that much each.
    """
    return bytes(memoryview(orjson.dumps(value)))


def encode_item(item: dict[str, Any]) -> bytes:
    """A status item's JSON, sized to keep."""
    return _dumps(item)


def _join(parts: Iterable[bytes]) -> bytes:
    return b"[" + b",".join(parts) + b"]"


def hello_frame(user: str, session: str, node: str, heartbeat_s: float) -> bytes:
    hb: float | int = int(heartbeat_s) if float(heartbeat_s).is_integer() else heartbeat_s
    return _dumps(
        {"type": "hello", "user": user, "session": session, "node": node, "heartbeat_s": hb}
    )


def snapshot_frame(encoded_items: Iterable[bytes]) -> bytes:
    return b'{"type":"snapshot","items":' + _join(encoded_items) + b"}"


_STATUS_ITEMS = b'{"type":"status","items":'


def status_frame(encoded_items: Iterable[bytes]) -> bytes:
    return _STATUS_ITEMS + _join(encoded_items) + b"}"


WEBSOCKET_PING_FRAME = b"\x89\x00"
"""A server's WebSocket ping with no payload (RFC 6455 5.5.2)."""


def websocket_text_frame(payload: bytes) -> bytes:
    """`payload` as a server's WebSocket text frame (RFC 6455 5.2: final, unmasked, not
    compressed), so that one change is framed once and written to many sockets as is."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


def framed_status(item: bytes) -> bytes:
    """A one-item status frame, WebSocket framing included, ready to write as is."""
    return websocket_text_frame(status_frame((item,)))


FRAMED_STATUS_ITEM_END = -2
"""Where the item of a `framed_status` frame ends, from the frame's end (before `]}`)."""


def framed_status_item_start(wire: bytes) -> int:
    """Where the item of a `framed_status` frame starts (after the header and `[`)."""
    size = wire[1]  # a server's frame is unmasked (RFC 6455 5.2)
    header = 2 if size < 126 else 4 if size == 126 else 10
    return header + len(_STATUS_ITEMS) + 1


def list_frame(added: Iterable[bytes], removed: Iterable[str]) -> bytes:
    return (
        b'{"type":"list","added":' + _join(added) + b',"removed":' + orjson.dumps(list(removed))
    ) + b"}"


def ack_frame(ref: str | None, item: dict[str, Any]) -> bytes:
    return _dumps({"type": "ack", "ref": ref, "item": item})


def pong_frame(ref: str | None) -> bytes:
    return _dumps({"type": "pong", "ref": ref})


def error_frame(ref: str | None, code: str, message: str) -> bytes:
    return _dumps({"type": "error", "ref": ref, "code": code, "message": message})


def error_body(code: str, message: str) -> bytes:
    """The JSON body of an HTTP error."""
    return orjson.dumps({"code": code, "message": message})
