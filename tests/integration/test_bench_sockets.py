"""The load generator's sockets on a real loopback server: where they connect from."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestServer

from service.bench import wsclient


async def _peer_server() -> TestServer:
    """A WebSocket endpoint that answers with the client's address."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        await ws.send_str(str(peer[0]) if peer else "?")
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def _peer_seen(url: str, source: str | None) -> str:
    conn = await wsclient.connect(url, lambda _conn: None, 5.0, source)
    try:
        await asyncio.wait_for(conn.wait_frames(1), 5.0)
        return conn.frames[0][1].decode()
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
