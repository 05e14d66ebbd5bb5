"""A node dies, Redis forgets everything, a client stops answering pings."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from tests.procs import API_HEADERS, Client

pytestmark = pytest.mark.timeout(120)


async def test_sigkilled_node_users_go_offline_within_ttl_plus_grace(make_deployment, http):
    dep = make_deployment(node_ttl_s=3, offline_grace_s=1)
    dep.add("node")
    dep.add("node")
    dep.add("worker")
    async with http.put(f"{dep.url()}/v1/friendships/alice/bob", headers=API_HEADERS) as r:
        assert r.status == 204
    alice = await Client.connect(http, dep.url(0), "alice")
    await Client.connect(http, dep.url(1), "bob")
    await alice.wait(lambda f: f["type"] == "status" and f["items"][0]["presence"] == "online")
    killed_at = time.monotonic()
    dep.nodes[1].kill()
    await alice.wait(
        lambda f: f["type"] == "status" and f["items"][0]["presence"] == "offline", timeout_s=15
    )
    took = time.monotonic() - killed_at
    # TTL 3 s + grace 1 s, plus up to 1 s of reaper period and delivery.
    assert took <= 3 + 1 + 1.5, took
    await alice.close()


async def test_redis_data_loss_nodes_reregister_and_watchers_converge(make_deployment, http):
    dep = make_deployment()
    dep.add("node")
    dep.add("node")
    dep.add("worker")
    async with http.put(f"{dep.url()}/v1/friendships/alice/bob", headers=API_HEADERS) as r:
        assert r.status == 204
    alice = await Client.connect(http, dep.url(0), "alice")
    bob = await Client.connect(http, dep.url(1), "bob")
    ack = await bob.request(op="set_status", presence="busy", text="before the flood")
    await alice.wait(
        lambda f: f["type"] == "status" and f["items"][0]["version"] == ack["item"]["version"]
    )
    await asyncio.sleep(1.0)  # the persist group writes the status to SQL

    with redis.Redis(port=dep.redis.port) as r:
        r.flushall()

    # Nodes notice the new epoch, re-register sessions and interest; the status
    # comes back from SQL and bob's next change reaches alice.
    deadline = time.monotonic() + 15
    while True:
        reply = await bob.request(op="set_status", text="after the flood")
        if reply["type"] == "ack":
            break
        assert time.monotonic() < deadline, reply
        await asyncio.sleep(0.5)
    item = reply["item"]
    assert item["presence"] == "busy", "the chosen presence came back from SQL"
    assert item["version"] > ack["item"]["version"]
    await alice.wait(
        lambda f: f["type"] == "status" and f["items"][0]["version"] >= item["version"],
        timeout_s=15,
    )
    assert alice.last("bob")["text"] == "after the flood"
    async with http.get(f"{dep.url(1)}/v1/users/bob/status", headers=API_HEADERS) as r:
        assert (await r.json())["presence"] == "busy"
    assert all(p.running for p in dep.nodes + dep.workers)
    await alice.close()
    await bob.close()


async def test_client_that_answers_no_ping_is_closed(make_deployment, http):
    dep = make_deployment(heartbeat_s=1)
    dep.add("node")
    dep.add("worker")
    silent = await Client.connect(http, dep.url(), "silent", autoping=False)
    hello = silent.frames[0]
    assert hello["heartbeat_s"] == 1
    started = time.monotonic()
    await silent.wait_closed(timeout_s=10)
    assert time.monotonic() - started <= 2 * 1 + 1
    polite = await Client.connect(http, dep.url(), "polite")
    await asyncio.sleep(3)
    assert polite.close_code is None and not polite.ws.closed
    await polite.close()
