"""The load generator's sockets on a real loopback server: where they connect from, and
when their bytes arrived."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.bench import wsclient

Handler = Callable[[web.Request], Awaitable[web.WebSocketResponse]]


async def _serve(handler: Handler) -> TestServer:
    """A loopback server with `handler` at /ws."""
    app = web.Application()
    app.router.add_get("/ws", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def _peer_server() -> TestServer:
    """A WebSocket endpoint that answers with the client's address."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        await ws.send_str(str(peer[0]) if peer else "?")
        await ws.close()
        return ws

    return await _serve(handler)


async def _peer_seen(url: str, source: str | None) -> str:
    conn = await wsclient.connect(url, lambda _conn: None, 5.0, source)
    try:
        await asyncio.wait_for(conn.wait_frames(1), 5.0)
        return conn.frames[0][2].decode()
    finally:
        conn.abort()


async def test_sessions_connect_from_the_source_address_they_are_given() -> None:
    server = await _peer_server()
    try:
        url = f"http://127.0.0.1:{server.port}/ws"
        sources = wsclient.loopback_sources(url, count=3)
        assert sources == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        assert [await _peer_seen(url, s) for s in sources] == sources
        assert await _peer_seen(url, None) == "127.0.0.1"
    finally:
        await server.close()


def test_only_a_loopback_service_gets_spread_sources() -> None:
    assert len(wsclient.loopback_sources("http://127.0.0.1:8080")) == wsclient.SOURCE_ADDRESSES
    assert wsclient.loopback_sources("http://10.0.0.7:8080") == []
    assert wsclient.loopback_sources("http://[::1]:8080") == []
    assert wsclient.loopback_sources("http://presence.example:8080") == []


def _until_the_kernel_stamps() -> None:
    """Linux turns stamping on in the background once a socket asks for it: wait for that,
    with a socket of our own that asks, so the client's first packets are stamped."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.setsockopt(socket.SOL_SOCKET, wsclient.SO_TIMESTAMPNS, 1)
    probe.bind(("127.0.0.1", 0))
    probe.settimeout(1.0)
    deadline = time.monotonic() + 5
    try:
        while time.monotonic() < deadline:
            probe.sendto(b"?", probe.getsockname())
            _, ancillary, _, _ = probe.recvmsg(16, socket.CMSG_SPACE(16))
            if ancillary:
                return
        raise AssertionError("the kernel never stamped a packet")
    finally:
        probe.close()


@pytest.mark.skipif(sys.platform != "linux", reason="SO_TIMESTAMPNS is Linux's")
async def test_a_frame_carries_the_time_its_bytes_arrived_not_the_time_it_was_read() -> None:
    _until_the_kernel_stamps()
    sent_at: list[float] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sent_at.append(time.time())
        await ws.send_str("stamped")
        time.sleep(0.3)  # noqa: ASYNC251 - holds up the loop, and the client's read with it
        await ws.receive()
        return ws

    server = await _serve(handler)
    try:
        conn = await wsclient.connect(f"http://127.0.0.1:{server.port}/ws", lambda _c: None, 5.0)
        try:
            await asyncio.wait_for(conn.wait_frames(1), 5.0)
            arrived, read, payload = conn.frames[0]
        finally:
            conn.abort()
    finally:
        await server.close()
    assert payload == b"stamped"
    assert read - sent_at[0] >= 0.29
    assert 0 <= arrived - sent_at[0] < 0.1, (arrived, read, sent_at)


async def test_what_the_socket_does_not_take_goes_out_before_the_close() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    connecting = asyncio.ensure_future(wsclient._open_socket(*listener.getsockname(), None))
    server_side, _ = await loop.sock_accept(listener)
    received = bytearray()
    lost: list[Exception | None] = []

    class Sink:
        def connection_made(self, transport: object) -> None: ...

        def data_received(self, data: bytes, arrived: float | None = None) -> None: ...

        def connection_lost(self, exc: Exception | None) -> None:
            lost.append(exc)

    transport = wsclient.StampedTransport(await connecting, Sink())  # type: ignore[arg-type]
    payload = bytes(range(256)) * 40_000  # 10 MB: more than the socket buffers hold
    transport.write(payload)
    transport.close()
    assert transport.is_closing() and not lost, "the close waits for the writes"
    while chunk := await loop.sock_recv(server_side, 1 << 20):
        received += chunk
    server_side.close()
    listener.close()
    assert received == payload and lost == [None]


async def test_a_connect_nobody_answers_fails_with_the_systems_error() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        await wsclient.connect(f"http://127.0.0.1:{port}/ws", lambda _conn: None, 5.0)
