"""Processes die or restart under load: nothing acknowledged is lost, watchers converge."""

from __future__ import annotations

import asyncio
import random
import signal
import time

import aiohttp
import pytest
import redis

from tests.procs import API_HEADERS, Client, converge, mesh

pytestmark = pytest.mark.timeout(180)


async def put_status(http: aiohttp.ClientSession, base: str, user: str, text: str) -> int:
    async with http.put(
        f"{base}/v1/users/{user}/status", json={"text": text}, headers=API_HEADERS
    ) as reply:
        assert reply.status == 200, await reply.text()
        return int((await reply.json())["version"])


async def test_worker_sigkill_mid_burst_loses_nothing(make_deployment, http) -> None:
    dep = make_deployment(claim_idle_s=2)
    dep.add("node")
    dep.add("node")
    dep.add("worker")
    users = [f"w{n}" for n in range(20)]
    await mesh(http, dep, users)
    clients = [await Client.connect(http, dep.url(n % 2), u) for n, u in enumerate(users)]
    acked: dict[str, int] = {}

    async def burst(rounds: int) -> None:
        async def one(user: str, n: int) -> None:
            version = await put_status(http, dep.url(n % 2), user, f"{user} {n}")
            acked[user] = max(acked.get(user, 0), version)

        await asyncio.gather(*(one(u, n) for n in range(rounds) for u in users))

    first = asyncio.create_task(burst(15))
    await asyncio.sleep(0.3)
    dep.workers[0].kill()
    await first
    await burst(10)
    assert sum(1 for _ in acked) == 20
    dep.add("worker")
    await converge(clients, acked, timeout_s=30)
    with redis.Redis(port=dep.redis.port, decode_responses=True) as r:
        assert sum(r.xlen(f"bc:{{s{s}}}:dead") for s in range(4)) == 0
    await asyncio.gather(*(c.close() for c in clients))


@pytest.mark.parametrize("fsync", ["always", "everysec"])
async def test_redis_restart_with_aof(make_deployment, http, fsync) -> None:
    dep = make_deployment(redis_args=("--appendonly", "yes", "--appendfsync", fsync))
    dep.add("node")
    dep.add("node")
    dep.add("worker")
    users = [f"r{n}" for n in range(6)]
    await mesh(http, dep, users)
    clients = [await Client.connect(http, dep.url(n % 2), u) for n, u in enumerate(users)]
    acked = {u: await put_status(http, dep.url(), u, "before") for u in users}
    await converge(clients, acked, timeout_s=10)
    # Under `always` every acked write is on disk: even SIGKILL loses nothing.
    dep.redis.stop(kill=fsync == "always")
    await asyncio.sleep(1.0)
    dep.redis.start()
    for _ in range(100):
        try:
            for user in users:
                acked[user] = await put_status(http, dep.url(1), user, "after")
            break
        except AssertionError:
            await asyncio.sleep(0.2)
    with redis.Redis(port=dep.redis.port, decode_responses=True) as r:
        for user in users:
            assert int(r.hget(f"bc:{{s{_shard(user)}}}:st:{user}", "v")) == acked[user]
    await converge(clients, acked, timeout_s=20)
    assert all(p.running for p in dep.nodes + dep.workers)
    await asyncio.gather(*(c.close() for c in clients))


def _shard(user: str) -> int:
    from service.keys import shard_for

    return shard_for(user, 4)


async def test_rolling_restart_no_offline_flap(make_deployment, http) -> None:
    dep = make_deployment(offline_grace_s=3)
    dep.add("node")
    dep.add("node")
    dep.add("worker")
    users = [f"k{n}" for n in range(12)]
    await mesh(http, dep, users)
    sessions: dict[str, Client] = {}
    history: dict[str, list[Client]] = {u: [] for u in users}
    up = [True, True]
    close_codes: list[int | None] = []

    async def keep_connected(n: int, user: str) -> None:
        node = n % 2
        while True:
            if not up[node]:
                node = 1 - node
            try:
                client = await Client.connect(http, dep.url(node), user)
            except (aiohttp.ClientError, TimeoutError):
                node = 1 - node
                await asyncio.sleep(0.05)
                continue
            sessions[user] = client
            history[user].append(client)
            code = await client.wait_closed(timeout_s=600)
            close_codes.append(code)
            if code != 1012:
                return
            node = 1 - node

    keepers = [asyncio.create_task(keep_connected(n, u)) for n, u in enumerate(users)]
    for _ in range(200):
        if len(sessions) == len(users):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # everyone has seen everyone online
    acked: dict[str, int] = {}
    stop_load = asyncio.Event()

    async def load() -> None:
        n = 0
        while not stop_load.is_set():
            user = random.choice(users)
            try:
                version = await put_status(http, dep.url(0 if up[0] else 1), user, f"t{n}")
                acked[user] = max(acked.get(user, 0), version)
            except (aiohttp.ClientError, AssertionError):
                pass
            n += 1
            await asyncio.sleep(0.01)

    loader = asyncio.create_task(load())
    for index in (0, 1):
        up[index] = False
        node = dep.nodes[index]
        started = time.monotonic()
        node.signal(signal.SIGTERM)
        # Off the event loop: the clients must keep running while the node drains.
        assert await asyncio.to_thread(node.wait, 20) == 0, node.log_tail()
        print(f"node{index} drained in {time.monotonic() - started:.2f}s")
        await asyncio.sleep(0.5)
        await asyncio.to_thread(dep.restart, node)
        up[index] = True
        await asyncio.sleep(1.0)
    stop_load.set()
    await loader
    for user in users:
        acked.setdefault(user, 0)
    current = [sessions[u] for u in users]
    await converge(current, {u: v for u, v in acked.items() if v}, timeout_s=20)
    assert 1012 in close_codes
    flaps = [
        (c.user, item)
        for user in users
        for c in history[user]
        for frame in c.frames
        if frame["type"] == "status"
        for item in frame["items"]
        if item["presence"] == "offline"
    ]
    assert not flaps, flaps[:5]
    for client in current:
        await client.close()
    await asyncio.gather(*keepers, return_exceptions=True)
