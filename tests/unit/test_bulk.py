"""BulkReader: concurrent single-key reads answered by one bulk read."""

from __future__ import annotations

import asyncio

import pytest

from service.bulk import BulkReader


class Source:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail
        self.gate = asyncio.Event()
        self.gate.set()

    async def fetch(self, keys: list[str]) -> dict[str, int]:
        self.calls.append(list(keys))
        await self.gate.wait()
        if self.fail:
            raise ConnectionError("down")
        return {k: len(k) for k in keys if k != "absent"}


async def test_concurrent_gets_share_one_fetch() -> None:
    source = Source()
    reader: BulkReader[str, int] = BulkReader(source.fetch, missing=-1)
    got = await asyncio.gather(*(reader.get(k) for k in ["a", "bb", "a", "absent", "ccc"]))
    assert got == [1, 2, 1, -1, 3]
    assert source.calls == [["a", "bb", "absent", "ccc"]]


async def test_keys_asked_during_a_fetch_go_into_the_next() -> None:
    source = Source()
    source.gate.clear()
    reader: BulkReader[str, int] = BulkReader(source.fetch, missing=-1)
    first = asyncio.ensure_future(reader.get("a"))
    await asyncio.sleep(0.01)
    later = [asyncio.ensure_future(reader.get(k)) for k in ("bb", "ccc")]
    await asyncio.sleep(0.01)
    source.gate.set()
    assert await first == 1 and [await f for f in later] == [2, 3]
    assert source.calls == [["a"], ["bb", "ccc"]]


async def test_max_keys_splits_a_batch() -> None:
    source = Source()
    reader: BulkReader[str, int] = BulkReader(source.fetch, missing=-1, max_keys=2)
    assert list(await reader.get_many(["a", "bb", "ccc"])) == [1, 2, 3]
    assert source.calls == [["a", "bb"], ["ccc"]]


async def test_a_failed_fetch_fails_every_waiter_and_the_next_one_runs() -> None:
    source = Source(fail=True)
    reader: BulkReader[str, int] = BulkReader(source.fetch, missing=-1)
    results = await asyncio.gather(reader.get("a"), reader.get("b"), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results), results
    source.fail = False
    assert await reader.get("a") == 1


async def test_a_cancelled_waiter_leaves_the_others_their_answer() -> None:
    source = Source()
    source.gate.clear()
    reader: BulkReader[str, int] = BulkReader(source.fetch, missing=-1)
    gone = asyncio.ensure_future(reader.get("a"))
    kept = asyncio.ensure_future(reader.get("a"))
    await asyncio.sleep(0.01)
    gone.cancel()
    source.gate.set()
    assert await kept == 1
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_a_keys_failed_read_fails_only_that_key() -> None:
    async def fetch(keys: list[str]) -> dict[str, int | Exception]:
        return {k: ValueError(f"bad {k}") if k == "bad" else len(k) for k in keys}

    reader: BulkReader[str, int] = BulkReader(fetch, missing=-1)
    got = await asyncio.gather(*(reader.get(k) for k in ["a", "bad", "bb"]), return_exceptions=True)
    assert got[0] == 1 and got[2] == 2
    assert isinstance(got[1], ValueError) and str(got[1]) == "bad bad"


async def test_many_keys_of_many_tasks_share_a_fetch_and_come_back_in_order() -> None:
    source = Source()
    reader: BulkReader[str, int] = BulkReader(source.fetch, missing=-1)
    asks = [["ccc", "a", "absent"], ["a", "dddd"], ["bb", "ccc", "a"]]
    got = await asyncio.gather(*(reader.get_many(ask) for ask in asks))
    assert [list(g) for g in got] == [[3, 1, -1], [1, 4], [2, 3, 1]]
    assert source.calls == [["ccc", "a", "absent", "dddd", "bb"]]  # each key read once


async def test_a_request_larger_than_max_keys_is_read_in_chunks_beside_others() -> None:
    source = Source()
    reader: BulkReader[str, int] = BulkReader(source.fetch, missing=-1, max_keys=3)
    keys = ["a", "bb", "ccc", "dddd", "eeeee"]
    got = await asyncio.gather(reader.get_many(keys), reader.get("ffffff"))
    assert list(got[0]) == [1, 2, 3, 4, 5] and got[1] == 6
    assert source.calls == [["a", "bb", "ccc"], ["dddd", "eeeee", "ffffff"]]
    assert await reader.get_many([]) == []
