"""Reads of keys from many tasks at once, answered together by one bulk read.

A connect storm asks the database for thousands of lists one owner at a time; each
query costs a transaction and a thread hop whatever its size. `BulkReader` turns the
requests that arrive while a read is in flight into the next single read.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


@dataclass(slots=True)
class _Request(Generic[K, V]):
    """One caller's keys, answered in order once every chunk of them has been read."""

    keys: list[K]
    values: list[V]
    future: asyncio.Future[list[V]]
    chunks: int


_Chunk = tuple[_Request[K, V], int, int]
"""A request's keys[start:stop], read in one fetch."""


class BulkReader(Generic[K, V]):
    """`await reader.get(key)` from many tasks runs one `fetch(keys)` for all of them.

    One fetch runs at a time, for at most `max_keys` keys (a key asked for twice is read
    once); keys asked for meanwhile wait for the next. A key `fetch` leaves out reads as
    `missing`. A failed fetch raises its error in every task that waited for it; an
    exception `fetch` gives as one key's value (that key's command failed) is raised in
    the tasks that asked for that key only.
    """

    def __init__(
        self,
        fetch: Callable[[list[K]], Awaitable[Mapping[K, V | Exception]]],
        missing: V,
        max_keys: int = 500,
    ) -> None:
        self._fetch = fetch
        self._missing = missing
        self._max_keys = max_keys
        self._queued: deque[_Chunk[K, V]] = deque()
        self._runner: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V:
        """The value of `key`, read together with those other tasks ask for meanwhile."""
        return (await self._ask([key]))[0]

    async def get_many(self, keys: Iterable[K]) -> Sequence[V]:
        """The values of `keys`, in order; one future for the call, not one per key."""
        wanted = list(keys)
        if not wanted:
            return []
        return await self._ask(wanted)

    def _ask(self, keys: list[K]) -> asyncio.Future[list[V]]:
        future: asyncio.Future[list[V]] = asyncio.get_running_loop().create_future()
        size, count = self._max_keys, len(keys)
        request = _Request(keys, [self._missing] * count, future, -(-count // size))
        self._queued.extend(
            (request, start, min(start + size, count)) for start in range(0, count, size)
        )
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="bulk-reader")
        return future

    def _take(self) -> list[_Chunk[K, V]]:
        """The queued chunks of the next fetch: at least one, up to `max_keys` keys."""
        batch = [self._queued.popleft()]
        size = batch[0][2] - batch[0][1]
        while self._queued:
            _, start, stop = self._queued[0]
            size += stop - start
            if size > self._max_keys:
                break
            batch.append(self._queued.popleft())
        return batch

    async def _run(self) -> None:
        batch: list[_Chunk[K, V]] = []
        try:
            while self._queued:
                # One turn of the loop lets the tasks woken with this one ask as well.
                await asyncio.sleep(0)
                batch = self._take()
                keys = dict.fromkeys(
                    itertools.chain.from_iterable(r.keys[a:b] for r, a, b in batch)
                )
                try:
                    found = await self._fetch(list(keys))
                except Exception as exc:
                    for request, _, _ in batch:
                        if not request.future.done():
                            request.future.set_exception(exc)
                    continue
                for request, start, stop in batch:
                    self._answer(request, start, stop, found)
                batch = []
        finally:
            self._runner = None
            # Cancelled (shutting down): nobody may wait for a read that will not come.
            for request, _, _ in itertools.chain(batch, self._queued):
                request.future.cancel()
            self._queued.clear()

    def _answer(
        self, request: _Request[K, V], start: int, stop: int, found: Mapping[K, V | Exception]
    ) -> None:
        if request.future.done():
            return
        values = request.values
        missing = self._missing
        for index, key in enumerate(request.keys[start:stop], start):
            value = found.get(key, missing)
            if isinstance(value, Exception):
                request.future.set_exception(value)
                return
            values[index] = value
        request.chunks -= 1
        if not request.chunks:
            request.future.set_result(values)
