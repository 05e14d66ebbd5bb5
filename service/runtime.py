"""The shared resources of one process: Redis clients, the database and the presence store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.config import Settings
from service.presence import PresenceStore
from service.redis_conn import connect
from service.storage import Database
from service.worker import BLOCKING_SOCKET_TIMEOUT_S


@dataclass
class Runtime:
    settings: Settings
    redis: Any
    blocking_redis: Any
    db: Database
    store: PresenceStore

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        """Clients for the configured Redis and database (connections open lazily)."""
        settings.require("redis_url")
        redis = connect(settings.redis_url or "")
        # Blocking reads get their own client whose timeout outlasts BLOCK.
        blocking = connect(settings.redis_url or "", socket_timeout_s=BLOCKING_SOCKET_TIMEOUT_S)
        db = Database.connect(settings.database_url)
        return cls(settings, redis, blocking, db, PresenceStore(redis, db, settings))

    async def close(self) -> None:
        await self.redis.aclose()
        await self.blocking_redis.aclose()
        await self.db.close()
