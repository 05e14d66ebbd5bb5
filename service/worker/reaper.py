"""The reaper: due offlines, nodes that stopped heartbeating, and stream gauges."""

from __future__ import annotations

import asyncio
import logging

from service import keys, metrics
from service.config import Settings
from service.presence import PresenceStore, now_ms

log = logging.getLogger(__name__)

DUE_EVERY_S = 0.25
NODES_EVERY_S = 1.0
GAUGES_EVERY_S = 5.0
CHUNK = 500


class Reaper:
    def __init__(self, store: PresenceStore, settings: Settings) -> None:
        self.store = store
        self.redis = store.redis
        self.settings = settings
        self.stopping = False

    async def run(self) -> None:
        await asyncio.gather(
            self._every(DUE_EVERY_S, self.offline_due),
            self._every(NODES_EVERY_S, self.reap_nodes),
            self._every(GAUGES_EVERY_S, self.update_gauges),
        )

    async def _every(self, period_s: float, job: object) -> None:
        backoff = period_s
        while not self.stopping:
            try:
                await job()  # type: ignore[operator]
                backoff = period_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "reaper %s: %s: %s", getattr(job, "__name__", job), type(exc).__name__, exc
                )
                backoff = min(backoff * 2, 5.0)
            await asyncio.sleep(backoff)

    async def offline_due(self) -> None:
        """Emit `offline` for users whose grace ran out, shard by shard."""
        for shard in range(self.settings.shards):
            while True:
                went = await self.store.offline_due(shard, CHUNK)
                metrics.OFFLINES_DUE.inc(went)
                if went < CHUNK:
                    break

    async def reap_nodes(self) -> None:
        """Close the sessions and drop the interest of nodes silent for the node TTL."""
        cutoff = now_ms() - int(self.settings.node_ttl_s * 1000)
        for node in await self.redis.zrangebyscore(keys.NODES, "-inf", cutoff):
            lock = f"{keys.PREFIX}:reaping:{node}"
            if not await self.redis.set(lock, "1", nx=True, px=30_000):
                continue
            await self.reap_node(node)
            metrics.NODES_REAPED.inc()

    async def reap_node(self, node: str) -> None:
        log.warning("node %s stopped heartbeating: closing its sessions", node)
        grace = self.settings.offline_grace_s
        sessions = list(await self.redis.smembers(keys.node_sessions(node)))
        for start in range(0, len(sessions), CHUNK):
            async with self.redis.pipeline(transaction=False) as pipe:
                for member in sessions[start : start + CHUNK]:
                    session, _, user = member.partition(" ")
                    k = self.store.keys(user)
                    await self.store.scripts.session_close(
                        keys=[k.status, k.sessions, k.due],
                        args=[user, session, now_ms() + int(grace * 1000)],
                        client=pipe,
                    )
                await pipe.execute()
        subjects = list(await self.redis.smembers(keys.node_interest(node)))
        for start in range(0, len(subjects), CHUNK):
            async with self.redis.pipeline(transaction=False) as pipe:
                for subject in subjects[start : start + CHUNK]:
                    pipe.srem(self.store.keys(subject).interest, node)
                await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(keys.node_sessions(node), keys.node_interest(node), keys.node_inbox(node))
            pipe.zrem(keys.NODES, node)
            await pipe.execute()

    async def update_gauges(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in range(self.settings.shards):
                pipe.xlen(keys.events_stream(shard))
                for group in (keys.FANOUT_GROUP, keys.PERSIST_GROUP):
                    pipe.xpending(keys.events_stream(shard), group)
            replies = await pipe.execute(raise_on_error=False)
        per_shard = 3
        for shard in range(self.settings.shards):
            length, *pending = replies[shard * per_shard : (shard + 1) * per_shard]
            if isinstance(length, int):
                metrics.STREAM_LENGTH.labels(shard=str(shard)).set(length)
            for group, reply in zip((keys.FANOUT_GROUP, keys.PERSIST_GROUP), pending, strict=True):
                if isinstance(reply, dict):
                    metrics.STREAM_PENDING.labels(shard=str(shard), group=group).set(
                        int(reply.get("pending", 0))
                    )
