"""The load generator's socket-level WebSocket client, fed bytes by hand."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from service.bench.wsclient import WsConnection, _client_frame
from service.protocol import websocket_text_frame

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = base64.b64encode(
    hashlib.sha1(KEY + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
).decode()


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def unmask(frame: bytes) -> tuple[int, bytes]:
    assert frame[1] & 0x80, "a client's frame is masked"
    size, start = frame[1] & 0x7F, 2
    if size == 126:
        size, start = int.from_bytes(frame[2:4], "big"), 4
    mask, payload = frame[start : start + 4], frame[start + 4 :]
    assert len(payload) == size
    return frame[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def opened() -> tuple[WsConnection, FakeTransport, list[WsConnection]]:
    arrivals: list[WsConnection] = []
    conn = WsConnection(KEY, arrivals.append)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport, arrivals


async def test_handshake_then_frames_split_anywhere() -> None:
    conn, _, arrivals = opened()
    small, large = websocket_text_frame(b"hello"), websocket_text_frame(b"x" * 300)
    data = (
        f"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n".encode()
        + small
        + large
    )
    for i in range(0, len(data), 7):  # in pieces that cut headers and payloads
        conn.data_received(data[i : i + 7])
    assert conn.handshake.done() and conn.handshake.exception() is None
    assert [payload for _, _, payload in conn.frames] == [b"hello", b"x" * 300]
    assert arrivals == []  # not live yet: the opener takes hello and snapshot itself
    conn.frames.clear()
    conn.live = True
    conn.data_received(small)
    assert arrivals == [conn] and [p for _, _, p in conn.frames] == [b"hello"]


async def test_reads_that_end_inside_a_frame_keep_the_rest_for_the_next() -> None:
    conn, _, _ = opened()
    conn.data_received(f"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n".encode())
    small, large = websocket_text_frame(b"hello"), websocket_text_frame(b"y" * 126)
    assert len(large) == 130 and large[1] == 126  # a 16-bit length follows
    conn.data_received(large[:128], 1.0)  # 128 bytes, as if a 126-byte frame were whole
    conn.data_received(large[128:] + small + large[:3], 2.0)
    conn.data_received(memoryview(large[3:]), 3.0)
    conn.data_received(memoryview(large), 4.0)  # whole, as a status frame mostly comes
    assert [(arrived, p) for arrived, _, p in conn.frames] == [
        (2.0, b"y" * 126),
        (2.0, b"hello"),
        (3.0, b"y" * 126),
        (4.0, b"y" * 126),
    ]


async def test_a_frame_with_a_64_bit_length_is_read_whole() -> None:
    conn, _, _ = opened()
    conn.data_received(f"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n".encode())
    huge = websocket_text_frame(b"z" * 70_000)
    assert huge[1] == 127  # a 64-bit length follows
    conn.data_received(huge[:9], 1.0)  # not even the whole header
    conn.data_received(huge[9:], 2.0)
    assert [(arrived, p) for arrived, _, p in conn.frames] == [(2.0, b"z" * 70_000)]


async def test_a_refused_upgrade_reports_its_status() -> None:
    conn, transport, _ = opened()
    conn.data_received(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n")
    error: Any = conn.handshake.exception()
    assert error.status == 429 and transport.closing


async def test_pings_are_answered_and_a_close_is_returned() -> None:
    conn, transport, _ = opened()
    conn.data_received(f"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n".encode())
    conn.data_received(b"\x89\x04ping")
    assert unmask(transport.written[-1]) == (0xA, b"ping")
    conn.data_received(b"\x88\x02\x03\xe8")
    assert conn.closed and conn.close_code == 1000
    assert unmask(transport.written[-1]) == (0x8, b"\x03\xe8")


def test_client_frames_are_masked_text() -> None:
    assert unmask(_client_frame(0x1, b"y" * 200)) == (0x1, b"y" * 200)
