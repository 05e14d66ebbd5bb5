"""The `fanout` group: expand committed changes into one inbox entry per interested node."""

from __future__ import annotations

import asyncio
import logging
import time

from service import keys, metrics
from service.config import Settings
from service.domain import Status
from service.events import InboxBatch, ListChange, UserDeleted, decode_event
from service.presence import PresenceStore, now_ms
from service.worker.consumer import Entry

log = logging.getLogger(__name__)

LIVE_NODES_TTL_S = 1.0
_T_LOOKUP = metrics.redis_timer("fanout_lookup")
_T_INBOX_WRITE = metrics.redis_timer("fanout_inbox_write")


class Fanout:
    def __init__(self, store: PresenceStore, settings: Settings) -> None:
        self.store = store
        self.redis = store.redis
        self.settings = settings
        self._live: set[str] = set()
        self._live_at = 0.0

    async def live_nodes(self) -> set[str]:
        """Nodes that heartbeated within the node TTL (cached for a second)."""
        if time.monotonic() - self._live_at > LIVE_NODES_TTL_S:
            cutoff = now_ms() - int(self.settings.node_ttl_s * 1000)
            self._live = set(await self.redis.zrangebyscore(keys.NODES, cutoff, "+inf"))
            self._live_at = time.monotonic()
        return self._live

    async def handle(self, entries: list[Entry]) -> None:
        """Coalesce per user, look up interest, write one inbox entry per node."""
        latest: dict[str, Status] = {}
        lists: list[ListChange] = []
        deleted: list[UserDeleted] = []
        for entry_id, fields in entries:
            try:
                event = decode_event(fields)
            except (KeyError, ValueError) as exc:
                log.error("malformed event %s skipped: %s", entry_id, exc)
                continue
            if isinstance(event, Status):
                known = latest.get(event.user)
                if known is None or (event.life, event.version) > (known.life, known.version):
                    latest[event.user] = event
            elif isinstance(event, ListChange):
                lists.append(event)
            else:
                deleted.append(event)
        metrics.FANOUT_BATCHES.inc()
        metrics.FANOUT_EVENTS.inc(len(entries))

        users = list(latest)
        owners = list(dict.fromkeys(change.owner for change in lists))
        with _T_LOOKUP.time():
            # Side by side, so a batch with list events still waits one round trip.
            interest, holding = await asyncio.gather(
                self.store.read_each("SMEMBERS", users, lambda k: k.interest),
                self.store.read_each("HVALS", owners, lambda k: k.sessions),
            )

        live = await self.live_nodes()
        batches: dict[str, InboxBatch] = {}
        stale: list[tuple[str, str]] = []
        for user, nodes in interest.items():
            if isinstance(nodes, Exception):
                raise nodes  # the batch is read again; no user's change is lost
            if not nodes:
                continue
            status = latest[user]
            item = (status.life, status.watcher_item())
            for node in nodes:
                if node in live:
                    batches.setdefault(node, InboxBatch()).items.append(item)
                else:
                    stale.append((user, node))
        for change in lists:
            nodes = holding[change.owner]
            if isinstance(nodes, Exception):
                raise nodes
            for node in set(nodes):
                batches.setdefault(node, InboxBatch()).lists.append(change)
        for gone in deleted:
            for node in gone.nodes:
                batches.setdefault(node, InboxBatch()).deleted.append(gone.user)
        if not batches and not stale:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for node, batch in batches.items():
                pipe.xadd(
                    keys.node_inbox(node),
                    {"b": batch.encode()},
                    maxlen=self.settings.inbox_maxlen,
                    approximate=True,
                )
            # A dead node's interest is dropped here, lazily; the reaper does the rest.
            for user, node in stale:
                pipe.srem(self.store.keys(user).interest, node)
            with _T_INBOX_WRITE.time():
                await pipe.execute()
        metrics.FANOUT_ENTRIES.inc(len(batches))
