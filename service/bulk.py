"""Reads of single keys from many tasks at once, answered together by one bulk read.

A connect storm asks the database for thousands of lists one owner at a time; each
query costs a transaction and a thread hop whatever its size. `BulkReader` turns the
requests that arrive while a read is in flight into the next single read.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BulkReader(Generic[K, V]):
    """`await reader.get(key)` from many tasks runs one `fetch(keys)` for all of them.

    One fetch runs at a time, for at most `max_keys` keys; keys asked for meanwhile wait
    for the next. A key `fetch` leaves out reads as `missing`. A failed fetch raises its
    error in every task that waited for it; an exception `fetch` gives as one key's value
    (that key's command failed) is raised in the tasks that asked for that key only.
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
        self._waiting: dict[K, list[asyncio.Future[V]]] = {}
        self._runner: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V:
        """The value of `key`, read together with those other tasks ask for meanwhile."""
        return await self._ask(key)

    async def get_many(self, keys: Iterable[K]) -> Sequence[V]:
        """The values of `keys`, in order."""
        return await asyncio.gather(*map(self._ask, keys))

    def _ask(self, key: K) -> asyncio.Future[V]:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="bulk-reader")
        return future

    async def _run(self) -> None:
        batch: dict[K, list[asyncio.Future[V]]] = {}
        try:
            while self._waiting:
                # One turn of the loop lets the tasks woken with this one ask as well.
                await asyncio.sleep(0)
                keys = list(itertools.islice(self._waiting, self._max_keys))
                batch = {key: self._waiting.pop(key) for key in keys}
                try:
                    found = await self._fetch(keys)
                except Exception as exc:
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for key, futures in batch.items():
                    value = found.get(key, self._missing)
                    for future in futures:
                        if future.done():
                            continue
                        if isinstance(value, Exception):
                            future.set_exception(value)
                        else:
                            future.set_result(value)
        finally:
            self._runner = None
            # Cancelled (shutting down): nobody may wait for a read that will not come.
            for future in itertools.chain(*batch.values(), *self._waiting.values()):
                if not future.done():
                    future.cancel()
            self._waiting.clear()
