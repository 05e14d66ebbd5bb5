"""The `persist` group: write committed statuses to SQL in batches, idempotently."""

from __future__ import annotations

import time

from service import metrics
from service.domain import Status
from service.events import decode_event
from service.presence import PresenceStore
from service.worker.consumer import Entry


class Persist:
    def __init__(self, store: PresenceStore) -> None:
        self.store = store

    async def handle(self, entries: list[Entry]) -> None:
        """Upsert the latest status per user; SQL keeps a row only for a later one."""
        latest: dict[str, Status] = {}
        for _entry_id, fields in entries:
            try:
                event = decode_event(fields)
            except (KeyError, ValueError):
                continue
            if isinstance(event, Status):
                known = latest.get(event.user)
                if known is None or (event.life, event.version) > (known.life, known.version):
                    latest[event.user] = event
        if not latest:
            return
        # An event of a user deleted since (their Redis status gone, or of another life)
        # must not bring the deleted row back.
        users = list(latest)
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.hmget(self.store.keys(user).status, "g", "v")
            current = await pipe.execute()
        rows = [
            latest[u]
            for u, (life, version) in zip(users, current, strict=True)
            if version is not None
            and int(life or 0) == latest[u].life
            and int(version) >= latest[u].version
        ]
        if not rows:
            return
        started = time.perf_counter()
        written = await self.store.db.upsert_statuses(rows)
        metrics.SQL_LATENCY.labels(op="upsert_statuses").observe(time.perf_counter() - started)
        metrics.PERSISTED.inc(written)
        await self._forget_deleted_since([s.user for s in rows])

    async def _forget_deleted_since(self, users: list[str]) -> None:
        # A user deleted between the check above and the upsert: its deletion marks when,
        # and the row just written belongs to the life that ended then.
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.get(self.store.keys(user).ended)
            marks = await pipe.execute()
        ended = {u: int(m) for u, m in zip(users, marks, strict=True) if m is not None}
        await self.store.db.forget_statuses(ended)
