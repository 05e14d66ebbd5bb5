"""The client's connections: commands and pipelines skip redis-py's per-send task, a
send the server does not take still times out and drops the connection, and a cluster
client's nodes use the same connections. Real redis-server, and a real cluster."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.embedded_redis import RedisProcess
from service.redis_conn import LeanConnection, connect
from tests.cluster import RedisCluster


@pytest.fixture
def own_redis(redis_server: RedisProcess) -> Iterator[RedisProcess]:
    """A redis-server of this test's own, so that it can be stopped."""
    server = RedisProcess(executable=redis_server.executable).start()
    yield server
    server.cleanup()


async def test_commands_and_pipelines_send_without_the_library_s_timed_path(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = connect(redis_url)
    assert client.connection_pool.connection_class is LeanConnection
    await client.ping()  # connected
    timed: list[Any] = []
    library_send = Connection.send_packed_command

    async def counted(self: Connection, *args: Any, **kwargs: Any) -> None:
        timed.append(args)
        await library_send(self, *args, **kwargs)

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    try:
        await client.set("k", "v")
        async with client.pipeline(transaction=False) as pipe:
            pipe.incr("n").incr("n").get("k")
            assert await pipe.execute() == [1, 2, "v"]
        assert await client.get("k") == "v"
        assert timed == []
    finally:
        await client.aclose()


async def test_a_send_the_server_does_not_take_times_out_and_drops_the_connection(
    own_redis: RedisProcess,
) -> None:
    client = connect(own_redis.url, socket_timeout_s=0.5)
    await client.ping()
    assert own_redis.process is not None
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Far more than the kernel's buffers hold, so the write must wait on the server.
        with pytest.raises(RedisTimeoutError, match="writing"):
            await client.set("big", b"x" * (64 << 20))
        assert loop.time() - started < 0.5 * 3 * 4  # three tries (two retries) with backoff
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    assert await client.ping()  # a fresh connection, with nothing half-sent on it
    await client.aclose()


async def test_a_connection_the_server_closed_is_replaced(redis_url: str) -> None:
    client = connect(redis_url)
    await client.set("k", "v")
    await client.client_kill_filter(skipme=False, _type="normal")
    # The write goes into a socket the server has closed; the read finds it closed.
    with pytest.raises(RedisConnectionError):
        await client.get("k")
    assert await client.get("k") == "v"
    await client.aclose()


async def test_every_node_of_a_cluster_client_uses_lean_connections() -> None:
    cluster = RedisCluster(masters=3).start()
    try:
        client = connect(cluster.url)
        try:
            user_keys = [f"k{n}" for n in range(60)]  # slots on every master
            for key in user_keys:
                await client.set(key, key)
            async with client.pipeline(transaction=False) as pipe:
                for key in user_keys:
                    pipe.get(key)
                assert await pipe.execute() == user_keys
            nodes = client.get_nodes()
            assert len(nodes) == 3
            for node in nodes:
                assert node._connections, node.name
                assert all(type(c) is LeanConnection for c in node._connections), node.name
        finally:
            await client.aclose()
    finally:
        cluster.stop()
