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
        """Upsert the highest version per user; SQL keeps a row only for a higher version."""
        latest: dict[str, Status] = {}
        for _entry_id, fields in entries:
            try:
                event = decode_event(fields)
            except (KeyError, ValueError):
                continue
            if isinstance(event, Status):
                known = latest.get(event.user)
                if known is None or event.version > known.version:
                    latest[event.user] = event
        if not latest:
            return
        # An event of a user deleted since (their Redis status gone, or restarted at a
        # lower version) must not bring the deleted row back.
        users = list(latest)
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.hget(self.store.keys(user).status, "v")
            versions = await pipe.execute()
        rows = [
            latest[u]
            for u, v in zip(users, versions, strict=True)
            if v is not None and int(v) >= latest[u].version
        ]
        if not rows:
            return
        started = time.perf_counter()
        written = await self.store.db.upsert_statuses(rows)
        metrics.SQL_LATENCY.labels(op="upsert_statuses").observe(time.perf_counter() - started)
        metrics.PERSISTED.inc(written)
