"""The worker role: `fanout` and `persist` consumers for every shard, and the reaper."""

from __future__ import annotations

import asyncio
from typing import Any

from service import keys
from service.config import Settings
from service.presence import PresenceStore
from service.tasks import cancel_and_wait
from service.worker.consumer import BLOCK_MS, GroupConsumer
from service.worker.fanout import Fanout
from service.worker.persist import Persist
from service.worker.reaper import Reaper

PERSIST_LINGER_S = 0.2


class Worker:
    """All worker loops of one process; `run()` until cancelled."""

    def __init__(self, store: PresenceStore, blocking_redis: Any, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        fanout = Fanout(store, settings)
        persist = Persist(store)
        consumer = settings.node_id
        # One read covers every shard on a single Redis. A Cluster refuses a read across
        # slots, and each shard is a slot of its own, so there each shard is read alone.
        shards = tuple(range(settings.shards))
        shard_sets = [(s,) for s in shards] if settings.redis_is_cluster else [shards]
        # Persistence is off the delivery path: it waits a little between short batches so
        # that each SQL transaction carries more rows.
        self.consumers = [
            GroupConsumer(
                store.redis, blocking_redis, shard_set, group, consumer, handle,
                settings.max_deliveries, int(settings.claim_idle_s * 1000), linger_s=linger_s,
            )
            for shard_set in shard_sets
            for group, handle, linger_s in (
                (keys.FANOUT_GROUP, fanout.handle, 0.0),
                (keys.PERSIST_GROUP, persist.handle, PERSIST_LINGER_S),
            )
        ]  # fmt: skip
        self.reaper = Reaper(store, settings)

    async def run(self) -> None:
        """Run every loop until cancelled; on cancellation, finish the batches in hand."""
        for consumer in self.consumers:
            await consumer.ensure_group()
        tasks = [asyncio.create_task(c.run(), name=f"{c.group} {c.name}") for c in self.consumers]
        reaper = asyncio.create_task(self.reaper.run(), name="reaper")
        try:
            # wait(), not gather(): cancelling this must not cancel the consumers mid-batch.
            await asyncio.wait([*tasks, reaper], return_when=asyncio.FIRST_EXCEPTION)
        finally:
            self.reaper.stopping = True
            for consumer in self.consumers:
                consumer.stopping.set()
            # A consumer stops after its current read and batch (a read blocks at most
            # BLOCK_MS); one that takes longer is cancelled and its batch stays pending
            # for another worker to claim.
            _done, late = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            await cancel_and_wait([*late, reaper])


BLOCKING_SOCKET_TIMEOUT_S = BLOCK_MS / 1000 + 5
STOP_TIMEOUT_S = BLOCK_MS / 1000 + 3
