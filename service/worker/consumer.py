"""The consumer-group routine shared by `fanout` and `persist`.

Create the group on each shard's stream, read new entries of all of them in one
XREADGROUP, run the handler once over them, ack after it succeeds. The acks go in one
pipeline with the next read, a round trip less per batch. A failed
batch stays pending and is retried from this consumer's pending list; entries left
pending by a dead consumer are claimed after `claim_idle_ms`; an entry delivered more
than `max_deliveries` times goes to the shard's dead-letter stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
from redis.exceptions import ResponseError

from service import keys, metrics
from service.scripts import Scripts

log = logging.getLogger(__name__)

Entry = tuple[str, dict[str, str]]
Handler = Callable[[list[Entry]], Awaitable[None]]

BLOCK_MS = 2000
COUNT = 500
CLAIM_IDLE_MS = 15_000
CLAIM_EVERY_S = 5.0
DEAD_LETTERS_MAXLEN = 100_000


class GroupConsumer:
    def __init__(
        self,
        redis: Any,
        blocking_redis: Any,
        shards: tuple[int, ...],
        group: str,
        consumer: str,
        handle: Handler,
        max_deliveries: int,
        claim_idle_ms: int = CLAIM_IDLE_MS,
        linger_s: float = 0.0,
    ) -> None:
        self.redis = redis
        self.blocking_redis = blocking_redis
        self.streams = {keys.events_stream(shard): shard for shard in shards}
        self.group = group
        self.consumer = consumer
        self.handle = handle
        self.max_deliveries = max_deliveries
        self.claim_idle_ms = claim_idle_ms
        self.linger_s = linger_s
        self._own_pending_first = True
        self._claim_every_s = min(CLAIM_EVERY_S, claim_idle_ms / 2000)
        self._next_claim = time.monotonic() + self._claim_every_s
        self.stopping = asyncio.Event()
        self.scripts = Scripts(redis)
        self._handled: dict[str, list[str]] = {}  # stream -> ids handled, not yet acked

    async def ensure_group(self) -> None:
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def run(self) -> None:
        """Consume until stopped; errors are logged once and retried with a capped backoff."""
        try:
            await self._consume()
        finally:
            # What was handled is acked before the consumer goes: left pending, it would be
            # handled again once claimed. If Redis is down now, it is (at least once).
            with contextlib.suppress(Exception):
                await self.ack()

    async def _consume(self) -> None:
        backoff = 0.1
        group_ready = False
        while not self.stopping.is_set():
            try:
                if not group_ready:
                    await self.ensure_group()
                    group_ready = True
                await self.step()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    group_ready = False  # Redis lost the stream: create it again.
                log.warning("%s %s: %s", self.group, self.name, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception as exc:
                log.warning("%s %s: %s: %s", self.group, self.name, type(exc).__name__, exc)
                self._own_pending_first = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def step(self) -> None:
        """One read-handle-ack round (plus a claim round when it is due)."""
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + self._claim_every_s
            await self.ack()  # what this consumer handled is not to be claimed back
            await self.claim()
        start = "0" if self._own_pending_first else ">"
        async with self.blocking_redis.pipeline(transaction=False) as pipe:
            # The acks first: a read of this consumer's own pending list must not see them.
            with self._acks_in(pipe):
                pipe.xreadgroup(
                    self.group,
                    self.consumer,
                    dict.fromkeys(self.streams, start),
                    count=COUNT,
                    block=None if self._own_pending_first else BLOCK_MS,
                )
                response = (await pipe.execute())[-1]
        read = {stream: entries for stream, entries in response or () if entries}
        if self._own_pending_first and not read:
            self._own_pending_first = False
            return
        await self._process(read)
        if self.linger_s and all(len(entries) < COUNT for entries in read.values()):
            # A short batch: let the next one grow (`linger_s`), unless asked to stop.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.linger_s)

    @property
    def name(self) -> str:
        """The shards read, for logs: `shard 3` or `shards 0-15`."""
        shards = self.streams.values()
        if len(shards) == 1:
            return f"shard {min(shards)}"
        return f"shards {min(shards)}-{max(shards)}"

    async def _process(self, read: dict[str, list[Entry]]) -> None:
        # Redis 6.2 returns trimmed-but-pending entries with no fields: nothing to do but ack.
        live = [(i, f) for entries in read.values() for i, f in entries if f]
        if live:
            await self.handle(live)
        self._hold({stream: [i for i, _ in entries] for stream, entries in read.items()})

    def _hold(self, handled: dict[str, list[str]]) -> None:
        for stream, ids in handled.items():
            self._handled.setdefault(stream, []).extend(ids)

    @contextlib.contextmanager
    def _acks_in(self, pipe: Any) -> Iterator[None]:
        """Queue the held acks in `pipe`; if the block fails, hold them again (an XACK is
        safe to send twice)."""
        handled, self._handled = self._handled, {}
        for stream, ids in handled.items():
            pipe.xack(stream, self.group, *ids)
        try:
            yield
        except BaseException:
            self._hold(handled)
            raise

    async def ack(self) -> None:
        """Ack now what was handled, instead of with the next read."""
        async with self.redis.pipeline(transaction=False) as pipe:
            with self._acks_in(pipe):
                await pipe.execute()  # nothing queued: no round trip

    async def claim(self) -> None:
        """Take over entries a stalled consumer left pending; dead-letter the hopeless ones."""
        for stream in self.streams:
            await self._claim_stream(stream)

    async def _claim_stream(self, stream: str) -> None:
        cursor = "0-0"
        while True:
            reply = await self.redis.xautoclaim(
                stream,
                self.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=cursor,
                count=100,
            )
            cursor, claimed = reply[0], reply[1]
            if any(entry_id is None for entry_id, _ in claimed):
                # Redis 6.2 claims trimmed entries as (nil, nil) and keeps them pending;
                # our own pending list returns them with no fields, and they are acked.
                claimed = [(i, f) for i, f in claimed if i is not None]
                self._own_pending_first = True
            if claimed:
                metrics.REDELIVERIES.labels(group=self.group).inc(len(claimed))
                await self._dead_letter_or_process(stream, claimed)
            if cursor in ("0-0", b"0-0"):
                return

    async def _dead_letter_or_process(self, stream: str, claimed: list[Entry]) -> None:
        ids = [i for i, _ in claimed]
        pending = await self.redis.xpending_range(
            stream, self.group, min=ids[0], max=ids[-1], count=len(ids) + 100
        )
        counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        hopeless = [(i, f) for i, f in claimed if counts.get(i, 0) > self.max_deliveries]
        if hopeless:
            dead = keys.dead_letters(self.streams[stream])
            args: list[Any] = [self.group, DEAD_LETTERS_MAXLEN]
            for entry_id, fields in hopeless:
                args += [entry_id, orjson.dumps(fields or {}).decode()]
            await self.scripts.dead_letter(keys=[stream, dead], args=args)
            metrics.DEAD_LETTERS.labels(group=self.group).inc(len(hopeless))
            log.error("%d %s entries moved to %s", len(hopeless), self.group, dead)
        rest = [(i, f) for i, f in claimed if counts.get(i, 0) <= self.max_deliveries]
        if rest:
            await self._process({stream: rest})
