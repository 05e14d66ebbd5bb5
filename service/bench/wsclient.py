"""The load generator's WebSocket client, at the socket level.

A celebrity change puts 10,000 frames on one client process at once, and the process
reads them one socket after another, sharing the cores with the service. The time it
reads the last of them is the generator's, not the service's: a watcher on a device of
its own would have it when its bytes arrive. So a frame carries two times: when the
kernel received its bytes (`SO_TIMESTAMPNS`, where the system gives it) and when the
generator read them. Linux stamps packets only once some socket has asked, turning it on
in the background; a read without a stamp counts as arriving when it was read.
Decoding waits for one pass over every session that got data.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3
_TEXT, _CLOSE, _PING, _PONG = 0x1, 0x8, 0x9, 0xA
_FIN_TEXT = 0x80 | _TEXT
SOURCE_ADDRESSES = 16
"""Loopback addresses a generator spreads its sockets over when the service is local."""
# Linux's SO_TIMESTAMPNS (asm-generic; Python's socket module does not name it): each read
# carries the time its last packet reached the socket, as a native struct timespec.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform == "linux" else None)
_TIMESPEC = struct.Struct("@ll")
ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
"""Room for the arrival stamp a read of a socket set up by `stamp_arrivals` carries."""
READ_SIZE = 256 * 1024
_read_buffer = bytearray(READ_SIZE)  # one process, one loop: reads never overlap
_read_view = memoryview(_read_buffer)


class Transport(Protocol):
    """What a connection writes through (a `StampedTransport`, or a test's fake)."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


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


class WsConnection:
    """One session's socket: text frames with their arrival and read times, pings answered
    at once.

    Until `live`, text frames collect in `frames` for whoever awaits `wait_frames`; after,
    each arrival reports the connection to `on_data`, which takes `frames` in one pass.
    """

    def __init__(self, key: bytes, on_data: Callable[[WsConnection], None]) -> None:
        self._key = key
        self._on_data = on_data
        self.transport: Transport | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._upgraded = False
        self.frames: list[tuple[float, float, bytes]] = []  # arrived, read, payload
        self._waiting: tuple[int, asyncio.Future[None]] | None = None
        self.live = False
        self.tag = -1  # the owner's name for this session
        self.closed = False
        self.close_code: int | None = None

    # ----- driven by the transport ----------------------------------------------------

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport

    def data_received(
        self, data: bytes | bytearray | memoryview, arrived: float | None = None
    ) -> None:
        """Take bytes that reached the socket at `arrived` (now, if the system did not say)."""
        read = time.time()
        if arrived is None:
            arrived = read
        bounds = None if self._buffer or not self._upgraded else _frame_at(data, 0)
        if bounds is not None and bounds[1] == len(data) and data[0] == _FIN_TEXT:
            # The common case, one status frame and nothing else, read where it lies.
            self.frames.append((arrived, read, bytes(data[bounds[0] :])))
            texts = 1
        else:
            if self._buffer or not self._upgraded:
                self._buffer += data
                if not self._upgraded and not self._read_handshake():
                    return
                data = self._buffer
            texts = self._read_frames(data, arrived, read)
        if texts:
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

    def _read_frames(
        self, buffer: bytes | bytearray | memoryview, arrived: float, read: float
    ) -> int:
        """Take the whole frames at the start of `buffer` (the connection's own, or bytes
        just read), keep the rest for later; the number of text frames."""
        texts = 0
        offset = 0
        while (bounds := _frame_at(buffer, offset)) is not None:
            first = buffer[offset]
            start, offset = bounds
            payload = bytes(buffer[start:offset])
            opcode = first & 0x0F
            if opcode == _TEXT:
                self.frames.append((arrived, read, payload))
                texts += 1
            elif opcode == _PING and self.transport is not None:
                self.transport.write(_client_frame(_PONG, payload))
            elif opcode == _CLOSE:
                # A close without a code reads as 1005 (RFC 6455 7.1.5).
                self.close_code = int.from_bytes(payload[:2]) if len(payload) >= 2 else 1005
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.write(_client_frame(_CLOSE, payload[:2]))
                    self.transport.close()
                self.closed = True
        if buffer is self._buffer:
            del self._buffer[:offset]
        elif offset < len(buffer):
            self._buffer += buffer[offset:]
        return texts


def _frame_at(buffer: bytes | bytearray | memoryview, offset: int) -> tuple[int, int] | None:
    """Where the payload of the frame at `offset` starts and ends, if it is all there.
    (A server's frames are unmasked, RFC 6455 5.2.)"""
    available = len(buffer) - offset
    if available < 2:
        return None
    size = buffer[offset + 1] & 0x7F
    start = offset + 2
    if size == 126:
        if available < 4:
            return None
        size = buffer[start] << 8 | buffer[start + 1]
        start += 2
    elif size == 127:
        if available < 10:
            return None
        (size,) = struct.unpack_from("!Q", buffer, start)
        start += 8
    end = start + size
    return (start, end) if end <= len(buffer) else None


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


def stamp_arrivals(sock: socket.socket) -> None:
    """Set up `sock` as the generator's: no Nagle delay, and each read stamped with the time
    its bytes arrived where the system can (without, reads carry no time)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if SO_TIMESTAMPNS is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


class StampedTransport:
    """A connected socket read with the kernel's arrival time of its bytes, for `protocol`.

    Reads go through `recvmsg` on the event loop's reader callback; writes go out at once,
    and what the socket does not take waits for its writer callback.
    """

    def __init__(self, sock: socket.socket, protocol: WsConnection) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._out = bytearray()
        self._closing = False
        self._lost = False
        stamp_arrivals(sock)
        protocol.connection_made(self)
        self._loop.add_reader(self._fd, self._read)

    def _read(self) -> None:
        try:
            size, ancillary, _, _ = self._sock.recvmsg_into([_read_view], ANCILLARY_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(exc)
            return
        if not size:
            self._lose(None)
            return
        arrived = None
        if ancillary:  # the socket asked for nothing else
            seconds, nanoseconds = _TIMESPEC.unpack_from(ancillary[0][2])
            arrived = seconds + nanoseconds / 1e9
        self._protocol.data_received(_read_view[:size], arrived)

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        if not self._out:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._lose(exc)
                return
            if sent == len(data):
                return
            data = data[sent:]
            self._loop.add_writer(self._fd, self._flush)
        self._out += data

    def _flush(self) -> None:
        try:
            sent = self._sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(exc)
            return
        del self._out[:sent]
        if not self._out:
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._lose(None)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Close once what is written has gone out."""
        self._closing = True
        if not self._out:
            self._lose(None)

    def abort(self) -> None:
        self._closing = True
        self._lose(None)

    def _lose(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._sock.close()
        self._protocol.connection_lost(exc)


async def _open_socket(host: str, port: int, source: str | None) -> socket.socket:
    """A TCP socket connected to (host, port), from `source` if given, its port picked at
    connect.

    Linux's connect() looks for a free local port by stepping through the range, checking
    each against every connection to the same destination; with all of a generator's
    sockets on one address, that took over a millisecond of CPU per connect past 15,000
    (docs/benchmarks.md). Each source address has its own ports.
    """
    loop = asyncio.get_running_loop()
    resolved = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, kind, proto, _, address = resolved[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        if source is not None:
            no_port = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", None)
            if no_port is not None:  # Linux: the port is chosen by connect, per destination
                sock.setsockopt(socket.IPPROTO_IP, no_port, 1)
            sock.bind((source, 0))
        await _connected(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


async def _connected(sock: socket.socket, address: tuple[Any, ...]) -> None:
    """Connect the non-blocking `sock` to a resolved `address`. uvloop's `sock_connect`
    resolves it again and took 58-60 µs of CPU a loopback connect against 33-35 µs here
    (docs/benchmarks.md): a connect storm makes 20,000."""
    try:
        sock.connect(address)
        return
    except BlockingIOError:
        pass
    loop = asyncio.get_running_loop()
    writable = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:  # the socket stays writable until the waiter runs
        if not writable.done():
            writable.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await writable
    finally:
        loop.remove_writer(fd)
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, f"connect to {address}: {os.strerror(error)}")


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
    conn = WsConnection(key, on_data)
    # One deadline for the whole open: `asyncio.wait_for` would start a task per step.
    async with asyncio.timeout(timeout_s):
        transport = StampedTransport(await _open_socket(host, port, source), conn)
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
