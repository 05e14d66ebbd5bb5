"""Redis clients from `BUDDYCAST_REDIS_URL`: one Redis or a Redis Cluster."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

REDIS_DOWN: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
)
"""Exceptions that mean Redis is unreachable right now (answered as `unavailable`)."""

COMMAND_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 512
"""Per Redis server: a burst beyond it waits for a free connection (single Redis) or is
retried by the caller (cluster, whose async client raises when a node's pool is full)."""


def connect(url: str, socket_timeout_s: float = COMMAND_TIMEOUT_S) -> Any:
    """A client for `url`; `socket_timeout_s` must exceed any BLOCK the client issues."""
    parts = urlsplit(url)
    # Few quick retries: a caller that still fails reports `unavailable` and lets the
    # client retry, rather than stalling a request for the library's default minute.
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2)
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
        return RedisCluster(
            startup_nodes=seeds,
            max_connections=MAX_CONNECTIONS,
            ssl=parts.scheme.startswith("rediss"),
            password=parts.password,
            username=parts.username,
            **common,
        )
    pool = BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=socket_timeout_s, health_check_interval=10,
        **common,
    )  # fmt: skip
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
