"""Redis clients from `BUDDYCAST_REDIS_URL`: one Redis or a Redis Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Connection, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# redis-py 8 raises this when no cluster node answers; older versions have no such class.
_CLUSTER_UNREACHABLE: type[Exception] = getattr(
    redis_errors, "RedisClusterUnreachableError", ClusterDownError
)

REDIS_DOWN: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
    # A cluster answers CLUSTERDOWN (or TRYAGAIN) while some slots have no master, and the
    # client may know no node for a slot: Redis is down for those keys.
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
    _CLUSTER_UNREACHABLE,
)
"""Exceptions that mean Redis is unreachable right now (answered as `unavailable`)."""

COMMAND_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 512
"""Per Redis server: a burst beyond it waits for a free connection (single Redis) or is
retried by the caller (cluster, whose async client raises when a node's pool is full)."""


class LeanConnection(Connection):
    """A TCP connection that costs its client less CPU per command than redis-py's.

    - Commands are packed by hiredis: redis-py's asyncio client packs them in Python,
      which took 70 µs for a 50-key script call that hiredis packs in 8.
    - Sends skip redis-py's `asyncio.wait_for`, which on Python 3.11 starts a task per
      command. A send the socket takes whole cannot time out, so only one that leaves
      bytes buffered waits, under the same timeout.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        name, rest = args[0], args[1:]
        # As redis-py does: a name such as "CLIENT KILL" is sent as two arguments.
        if isinstance(name, str):
            args = (*name.encode().split(), *rest)
        elif isinstance(name, bytes) and b" " in name:
            args = (*name.split(), *rest)
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # a type hiredis does not pack: redis-py's packer decides
            return super().pack_command(*args)

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if not isinstance(command, list) or not self.is_connected:
            await super().send_packed_command(command, check_health)
            return
        if check_health:
            await self.check_health()  # type: ignore[no-untyped-call]
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            await super().send_packed_command(command, check_health=False)
            return
        try:
            writer.writelines(command)
            if writer.transport.get_write_buffer_size():
                async with asyncio.timeout(self.socket_timeout):
                    await writer.drain()
        except BaseException as exc:
            # A send cut short leaves the stream unusable, and its unsent bytes useless:
            # drop them rather than let the closing transport hold them.
            writer.transport.abort()
            await self.disconnect(nowait=True)
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError("Timeout writing to socket") from None
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"Error while writing to socket: {exc}") from exc
            raise


def _use_lean_connections(cluster: RedisCluster) -> None:
    """The cluster client takes no connection class, so its nodes are given one: those
    it starts from now, and those it finds later through the kwargs it builds them with."""
    manager = cluster.nodes_manager
    manager.connection_kwargs["connection_class"] = LeanConnection
    for node in manager.startup_nodes.values():
        node.connection_class = LeanConnection


def connect(url: str, socket_timeout_s: float = COMMAND_TIMEOUT_S) -> Any:
    """A client for `url`; `socket_timeout_s` must exceed any BLOCK the client issues."""
    parts = urlsplit(url)
    # No retries inside the library: a caller that fails reports `unavailable` and lets
    # the client retry, or retries with its own backoff, rather than stalling a request
    # (and resending a script that may have run). Up to redis-py 8.1 the synchronous
    # Retry given here before retried nothing in an asyncio client; 8.2 made it retry.
    retry = Retry(NoBackoff(), retries=0)
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": 2.0,
        "retry": retry,
        "protocol": 2,
    }
    if parts.scheme.endswith("+cluster"):
        seeds = []
        for seed in parts.netloc.rsplit("@", 1)[-1].split(","):
            host, _, port = seed.rpartition(":")
            seeds.append(ClusterNode(host, int(port)))
        tls = parts.scheme.startswith("rediss")
        cluster = RedisCluster(
            startup_nodes=seeds,
            max_connections=MAX_CONNECTIONS,
            ssl=tls,
            password=parts.password,
            username=parts.username,
            **common,
        )
        if not tls:
            _use_lean_connections(cluster)
        return cluster
    pool = BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=socket_timeout_s, health_check_interval=10,
        **common,
    )  # fmt: skip
    if pool.connection_class is Connection:  # TCP: TLS and Unix sockets keep their own
        pool.connection_class = LeanConnection
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
