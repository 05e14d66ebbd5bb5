"""Typed application keys of the node app, and the per-address connection limiter."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from aiohttp import web

from service.config import Settings
from service.node.hub import Hub
from service.storage import Database

SETTINGS = web.AppKey("settings", Settings)
HUB = web.AppKey("hub", Hub)
DATABASE = web.AppKey("database", Database)
REDIS = web.AppKey("redis", object)


class ConnectLimiter:
    """Token bucket per client address, for WebSocket connects; remembers a bounded set."""

    def __init__(self, rate_per_s: float, max_addresses: int = 65536) -> None:
        self.rate = rate_per_s
        self.burst = max(1.0, rate_per_s * 2)
        self.max_addresses = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, address: str) -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.pop(address, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[address] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        return allowed


LIMITER = web.AppKey("connect_limiter", ConnectLimiter)


def ip_limiter(app: web.Application) -> ConnectLimiter:
    return app[LIMITER]


def redis_of(app: web.Application) -> Any:
    return app[REDIS]
