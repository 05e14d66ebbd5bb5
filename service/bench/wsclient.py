"""The load generator's WebSocket client, at the socket level.

A celebrity change puts 10,000 frames on one client process at once. Through a
high-level client each costs a task switch and a queue before the generator can read
the clock, and the last of them looks hundreds of milliseconds late although the
service sent it in time. Here a frame is timestamped when its bytes arrive
(`data_received`), and decoding waits for one pass over every session that got data.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3
_TEXT, _CLOSE, _PING, _PONG = 0x1, 0x8, 0x9, 0xA
SOURCE_ADDRESSES = 16
"""Loopback addresses a generator spreads its sockets over when the service is local."""


class HandshakeError(Exception):
    """The server answered the upgrade with something else than 101 (`status`, 0 if none)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"handshake refused with HTTP {status}")
        self.status = status


def _client_frame(opcode: int, payload: bytes) -> bytes:
    # A client's frames are masked (RFC 6455 5.3).
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    mask = os.urandom(4)
    repeated = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        size, "big"
    )
    return header + mask + masked


class WsConnection(asyncio.Protocol):
    """One session's socket: text frames with their arrival time, pings answered at once.

    Until `live`, text frames collect in `frames` for whoever awaits `wait_frames`; after,
    each arrival reports the connection to `on_data`, which takes `frames` in one pass.
    """

    def __init__(self, key: bytes, on_data: Callable[[WsConnection], None]) -> None:
        self._key = key
        self._on_data = on_data
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._upgraded = False
        self.frames: list[tuple[float, bytes]] = []
        self._waiting: tuple[int, asyncio.Future[None]] | None = None
        self.live = False
        self.tag = -1  # the owner's name for this session
        self.closed = False
        self.close_code: int | None = None

    # ----- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, though they behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        received = time.time()
        self._buffer += data
        if not self._upgraded and not self._read_handshake():
            return
        before = len(self.frames)
        self._read_frames(received)
        if len(self.frames) > before:
            if self.live:
                self._on_data(self)
            elif self._waiting is not None and len(self.frames) >= self._waiting[0]:
                waiter = self._waiting[1]
                if not waiter.done():
                    waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.close_code is None:
            self.close_code = 1006
        if self.live:
            self._on_data(self)
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeError(0))
        if self._waiting is not None and not self._waiting[1].done():
            self._waiting[1].set_exception(ConnectionError("closed"))

    # ----- use -------------------------------------------------------------------------

    async def wait_frames(self, count: int) -> None:
        """Until `count` text frames have arrived (raise ConnectionError if it closes)."""
        if len(self.frames) >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting = (count, future)
        try:
            await future
        finally:
            self._waiting = None

    def send_text(self, payload: bytes) -> None:
        """Send one text frame (raise ConnectionError once the socket is closed)."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ConnectionError("closed")
        self.transport.write(_client_frame(_TEXT, payload))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ----- parsing ---------------------------------------------------------------------

    def _read_handshake(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        parts = head[0].split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in head[1:])
        }
        accept = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
        if status != 101 or headers.get("sec-websocket-accept") != accept:
            self.handshake.set_exception(HandshakeError(status))
            self.abort()
            return False
        self._upgraded = True
        self.handshake.set_result(None)
        return True

    def _read_frames(self, received: float) -> None:
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            size = second & 0x7F
            start = offset + 2
            if size == 126:
                if len(buffer) - offset < 4:
                    break
                (size,) = struct.unpack_from("!H", buffer, start)
                start += 2
            elif size == 127:
                if len(buffer) - offset < 10:
                    break
                (size,) = struct.unpack_from("!Q", buffer, start)
                start += 8
            if len(buffer) - start < size:
                break
            payload = bytes(buffer[start : start + size])
            offset = start + size
            opcode = first & 0x0F
            if opcode == _TEXT:
                self.frames.append((received, payload))
            elif opcode == _PING and self.transport is not None:
                self.transport.write(_client_frame(_PONG, payload))
            elif opcode == _CLOSE:
                self.close_code = struct.unpack_from("!H", payload)[0] if size >= 2 else 1005
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.write(_client_frame(_CLOSE, payload[:2]))
                    self.transport.close()
                self.closed = True
        del buffer[:offset]


def loopback_sources(url: str, count: int = SOURCE_ADDRESSES) -> list[str]:
    """Source addresses to spread connections to `url` over: `count` loopback addresses
    when it is on this machine's IPv4 loopback, else none (the system picks)."""
    try:
        host = ipaddress.ip_address(urlsplit(url).hostname or "")
    except ValueError:
        return []
    if not (isinstance(host, ipaddress.IPv4Address) and host.is_loopback):
        return []
    return [f"127.0.0.{n}" for n in range(2, 2 + count)]


async def _open_socket(host: str, port: int, source: str) -> socket.socket:
    """A TCP socket connected to (host, port) from `source`, its port picked at connect.

    Linux's connect() looks for a free local port by stepping through the range, checking
    each against every connection to the same destination; with all of a generator's
    sockets on one address, that took over a millisecond of CPU per connect past 15,000
    (docs/benchmarks.md). Each source address has its own ports.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        no_port = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", None)
        if no_port is not None:  # Linux: the port is chosen by connect, per destination
            sock.setsockopt(socket.IPPROTO_IP, no_port, 1)
        sock.bind((source, 0))
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def connect(
    url: str,
    on_data: Callable[[WsConnection], None],
    timeout_s: float,
    source: str | None = None,
) -> WsConnection:
    """Open a WebSocket to `url` (http://host:port/path?query), from the `source` address if
    given, within `timeout_s`; raise HandshakeError, OSError or TimeoutError."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    key = base64.b64encode(os.urandom(16))
    loop = asyncio.get_running_loop()

    def protocol() -> WsConnection:
        return WsConnection(key, on_data)

    # One deadline for the whole open: `asyncio.wait_for` would start a task per step.
    async with asyncio.timeout(timeout_s):
        if source is None:
            transport, conn = await loop.create_connection(protocol, host, port)
        else:
            sock = await _open_socket(host, port, source)
            transport, conn = await loop.create_connection(protocol, sock=sock)
        # uvloop may call connection_made only after create_connection has returned.
        conn.transport = transport
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        transport.write(
            f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        try:
            await asyncio.shield(conn.handshake)
        except BaseException:
            conn.abort()
            raise
    return conn
