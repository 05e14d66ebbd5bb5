"""The node's side of the interest registry: which subjects this node wants changes of.

Adds and removes are coalesced into one pipelined flush at a time, so a SADD and a
later SREM of the same subject can never reach Redis out of order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from service import keys
from service.keys import UserKeys
from service.scripts import Scripts
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class InterestRegistry:
    def __init__(
        self, redis: Any, node: str, keys_of: Callable[[str], UserKeys], scripts: Scripts
    ) -> None:
        self._redis = redis
        self._node = node
        self._keys_of = keys_of
        self._scripts = scripts
        self._desired: dict[str, bool] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="interest-flusher")

    async def stop(self) -> None:
        self._stopping = True
        self._kick.set()
        if self._task is not None:
            await cancel_and_wait([self._task])

    async def add(self, subjects: Iterable[str]) -> None:
        """Register interest and wait until Redis has it."""
        for subject in subjects:
            self._desired[subject] = True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._kick.set()
        await waiter

    def remove(self, subjects: Iterable[str]) -> None:
        """Drop interest; written in the background."""
        for subject in subjects:
            self._desired[subject] = False
        self._kick.set()

    async def _run(self) -> None:
        backoff = 0.05
        while not self._stopping:
            await self._kick.wait()
            self._kick.clear()
            batch, self._desired = self._desired, {}
            waiters, self._waiters = self._waiters, []
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("interest flush failed (%d subjects): %s", len(batch), exc)
                # Keep newer wishes; retry the rest.
                for subject, wanted in batch.items():
                    self._desired.setdefault(subject, wanted)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(ConnectionError(f"interest flush failed: {exc}"))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                self._kick.set()
                continue
            backoff = 0.05
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _write(self, batch: dict[str, bool]) -> None:
        if not batch:
            return
        own = keys.node_interest(self._node)
        added = [s for s, wanted in batch.items() if wanted]
        removed = [s for s, wanted in batch.items() if not wanted]
        async with self._redis.pipeline(transaction=False) as pipe:
            # One `interest.lua` call per shard and direction, not a command per subject.
            for subjects, flag in ((added, "1"), (removed, "0")):
                for group in keys.by_shard(subjects, self._keys_of):
                    sets = [self._keys_of(subject).interest for subject in group]
                    await self._scripts.interest(keys=sets, args=[self._node, flag], client=pipe)
            if added:
                pipe.sadd(own, *added)
            if removed:
                pipe.srem(own, *removed)
            await pipe.execute()

    async def reregister(self, subjects: Iterable[str]) -> None:
        """Write every current subject again (after Redis lost its data)."""
        await self.add(subjects)
