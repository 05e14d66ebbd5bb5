"""The delivery guarantees and lifecycle rules of PROTOCOL.md, with real processes."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import jwt
import orjson
import pytest

from tests.procs import API_HEADERS, JWT_SECRET, Client, Deployment, token

pytestmark = pytest.mark.timeout(120)


async def api(http: aiohttp.ClientSession, dep: Deployment, method: str, path: str) -> int:
    async with http.request(method, dep.url() + path, headers=API_HEADERS) as reply:
        return reply.status


async def friends(http: aiohttp.ClientSession, dep: Deployment, a: str, b: str) -> None:
    assert await api(http, dep, "PUT", f"/v1/friendships/{a}/{b}") == 204


async def test_hello_and_snapshot_with_offline_entries(deployment, http, uid) -> None:
    alice, bob, carol = f"{uid}a", f"{uid}b", f"{uid}c"
    await friends(http, deployment, alice, bob)
    assert await api(http, deployment, "PUT", f"/v1/users/{alice}/buddies/{carol}") == 204
    ws = await http.ws_connect(f"{deployment.url(1)}/v1/ws?token={token(alice)}")
    hello = orjson.loads((await ws.receive()).data)
    assert hello["type"] == "hello" and hello["user"] == alice
    assert hello["heartbeat_s"] == 20 and hello["session"] and hello["node"]
    snapshot = orjson.loads((await ws.receive()).data)
    assert snapshot["type"] == "snapshot"
    assert [i["user"] for i in snapshot["items"]] == sorted([bob, carol])
    for item in snapshot["items"]:
        assert item == {
            "user": item["user"], "presence": "offline", "text": "", "avatar": None,
            "version": 0, "updated_at": 0,
        }  # fmt: skip
    await ws.close()


async def test_cross_node_delivery_and_ack(deployment, http, uid) -> None:
    alice, bob = f"{uid}a", f"{uid}b"
    await friends(http, deployment, alice, bob)
    a = await Client.connect(http, deployment.url(0), alice)
    b = await Client.connect(http, deployment.url(1), bob)
    online = await a.wait(lambda f: f["type"] == "status")
    assert online["items"][0]["user"] == bob and online["items"][0]["presence"] == "online"
    ack = await b.request(op="set_status", presence="busy", text="in a meeting",
                          avatar="https://example.com/b.png")  # fmt: skip
    assert ack["type"] == "ack"
    own = ack["item"]
    assert own["presence"] == "busy" and own["text"] == "in a meeting"
    seen = await a.wait(
        lambda f: f["type"] == "status" and f["items"][-1]["version"] >= own["version"]
    )
    assert seen["items"][-1] == own
    await a.close()
    await b.close()


async def test_rapid_updates_only_increase_and_last_arrives(deployment, http, uid) -> None:
    alice, bob = f"{uid}a", f"{uid}b"
    await friends(http, deployment, alice, bob)
    a = await Client.connect(http, deployment.url(0), alice)
    b = await Client.connect(http, deployment.url(1), bob)
    last = None
    for n in range(10):
        await b.send(op="set_status", ref=f"r{n}", text=f"update {n}")
    for n in range(10):
        reply = await b.wait(lambda f, n=n: f.get("ref") == f"r{n}")
        assert reply["type"] == "ack"
        last = reply["item"]
    assert last is not None
    await a.wait(lambda f: any(i["version"] == last["version"] for i in f.get("items", [])))
    versions = [i["version"] for i in a.items(bob)]
    assert versions == sorted(set(versions)), versions
    assert a.last(bob) == last
    await a.close()
    await b.close()


async def test_rate_limit_keeps_session_open(deployment, http, uid) -> None:
    bob = f"{uid}b"
    b = await Client.connect(http, deployment.url(0), bob)
    for n in range(15):
        await b.send(op="set_status", ref=f"r{n}", text=str(n))
    replies = [await b.wait(lambda f, n=n: f.get("ref") == f"r{n}") for n in range(15)]
    codes = [r.get("code") for r in replies if r["type"] == "error"]
    assert codes and set(codes) == {"rate_limited"}
    assert sum(r["type"] == "ack" for r in replies) >= 10
    assert (await b.request(op="ping"))["type"] == "pong"
    await b.close()


async def test_grace_offline_and_reconnect_within_grace(deployment, http, uid) -> None:
    alice, bob = f"{uid}a", f"{uid}b"
    await friends(http, deployment, alice, bob)
    a = await Client.connect(http, deployment.url(0), alice)
    b = await Client.connect(http, deployment.url(1), bob)
    await a.wait(lambda f: f["type"] == "status" and f["items"][0]["presence"] == "online")
    # Reconnect within the 1 s grace: watchers see no change at all.
    mark = len(a.frames)
    await b.close()
    b = await Client.connect(http, deployment.url(0), bob)
    await asyncio.sleep(2.0)
    assert not [f for f in a.frames[mark:] if f["type"] == "status"], a.frames[mark:]
    # Leave for good: offline after the grace, not before.
    closed_at = time.monotonic()
    await b.close()
    offline = await a.wait(
        lambda f: f["type"] == "status" and f["items"][0]["presence"] == "offline", start=mark
    )
    waited = time.monotonic() - closed_at
    assert 0.9 <= waited <= 3.0, waited
    assert offline["items"][0]["text"] == ""
    await a.close()


async def test_many_sessions_one_user(deployment, http, uid) -> None:
    alice, bob = f"{uid}a", f"{uid}b"
    await friends(http, deployment, alice, bob)
    a = await Client.connect(http, deployment.url(0), alice)
    b1 = await Client.connect(http, deployment.url(0), bob)
    b2 = await Client.connect(http, deployment.url(1), bob)
    await a.wait(lambda f: f["type"] == "status")
    mark = len(a.frames)
    await b1.close()
    await asyncio.sleep(2.0)
    assert a.last(bob)["presence"] == "online" and len(a.frames) == mark
    ack = await b2.request(op="set_status", presence="away")
    await a.wait(
        lambda f: f["type"] == "status" and f["items"][0]["version"] == ack["item"]["version"]
    )
    await b2.close()
    await a.wait(lambda f: f["type"] == "status" and f["items"][0]["presence"] == "offline")
    await a.close()


async def test_invisible_shows_offline_to_watchers_only(deployment, http, uid) -> None:
    alice, bob = f"{uid}a", f"{uid}b"
    await friends(http, deployment, alice, bob)
    a = await Client.connect(http, deployment.url(0), alice)
    b = await Client.connect(http, deployment.url(1), bob)
    ack = await b.request(op="set_status", presence="invisible", text="secret")
    assert ack["item"]["presence"] == "invisible" and ack["item"]["text"] == "secret"
    seen = await a.wait(
        lambda f: f["type"] == "status" and f["items"][0]["version"] == ack["item"]["version"]
    )
    assert seen["items"][0]["presence"] == "offline" and seen["items"][0]["text"] == ""
    async with http.get(f"{deployment.url()}/v1/users/{bob}/status", headers=API_HEADERS) as r:
        assert (await r.json())["presence"] == "offline"
    # The choice is kept across sessions: a new session stays invisible.
    await b.close()
    b = await Client.connect(http, deployment.url(0), bob)
    ack = await b.request(op="set_status", presence="online")
    seen = await a.wait(
        lambda f: f["type"] == "status" and f["items"][0]["version"] == ack["item"]["version"]
    )
    assert seen["items"][0]["presence"] == "online" and seen["items"][0]["text"] == "secret"
    await a.close()
    await b.close()


async def test_list_edits_while_connected(deployment, http, uid) -> None:
    alice, bob, carol = f"{uid}a", f"{uid}b", f"{uid}c"
    a = await Client.connect(http, deployment.url(1), alice)
    c = await Client.connect(http, deployment.url(0), carol)
    assert await api(http, deployment, "PUT", f"/v1/users/{alice}/buddies/{carol}") == 204
    added = await a.wait(lambda f: f["type"] == "list")
    assert added["removed"] == [] and added["added"][0]["user"] == carol
    assert added["added"][0]["presence"] == "online"
    ack = await c.request(op="set_status", text="hello")
    await a.wait(
        lambda f: f["type"] == "status" and f["items"][0]["version"] == ack["item"]["version"]
    )
    # An idempotent re-PUT sends nothing.
    mark = len(a.frames)
    assert await api(http, deployment, "PUT", f"/v1/users/{alice}/buddies/{carol}") == 204
    assert (await a.request(op="ping"))["type"] == "pong"
    await asyncio.sleep(0.5)
    assert [f["type"] for f in a.frames[mark:]] == ["pong"]
    assert await api(http, deployment, "DELETE", f"/v1/users/{alice}/buddies/{carol}") == 204
    removed = await a.wait(lambda f: f["type"] == "list" and f["removed"], start=mark)
    assert removed == {"type": "list", "added": [], "removed": [carol]}
    # No status of carol after her removal.
    mark = len(a.frames)
    await c.request(op="set_status", text="you cannot see this")
    await asyncio.sleep(1.0)
    assert carol not in {i["user"] for f in a.frames[mark:] for i in f.get("items", [])}
    # A friendship reaches both sides.
    await friends(http, deployment, alice, bob)
    b = await Client.connect(http, deployment.url(0), bob)
    snap = await b.wait(lambda f: f["type"] == "snapshot")
    assert [i["user"] for i in snap["items"]] == [alice]
    await a.wait(lambda f: f["type"] == "list" and any(i["user"] == bob for i in f["added"]))
    for client in (a, b, c):
        await client.close()


async def test_user_deletion(deployment, http, uid) -> None:
    alice, bob = f"{uid}a", f"{uid}b"
    await friends(http, deployment, alice, bob)
    a = await Client.connect(http, deployment.url(0), alice)
    b = await Client.connect(http, deployment.url(1), bob)
    await a.wait(lambda f: f["type"] == "status" and f["items"][0]["presence"] == "online")
    mark = len(a.frames)
    assert await api(http, deployment, "DELETE", f"/v1/users/{bob}") == 204
    assert await b.wait_closed() == 1000
    assert b.ws.close_code == 1000
    removed = await a.wait(lambda f: f["type"] == "list", start=mark)
    assert removed["removed"] == [bob]
    kinds = [f["type"] for f in a.frames[mark:]]
    offline_at = next(
        i for i, f in enumerate(a.frames[mark:])
        if f["type"] == "status" and f["items"][0]["presence"] == "offline"
    )  # fmt: skip
    assert offline_at < kinds.index("list")
    async with http.get(f"{deployment.url()}/v1/users/{bob}/status", headers=API_HEADERS) as r:
        assert (await r.json())["version"] == 0
    await a.close()


async def test_resync_and_ping(deployment, http, uid) -> None:
    alice, bob = f"{uid}a", f"{uid}b"
    await friends(http, deployment, alice, bob)
    a = await Client.connect(http, deployment.url(0), alice)
    pong = await a.request(op="ping")
    assert pong == {"type": "pong", "ref": pong["ref"]}
    mark = len(a.frames)
    await a.send(op="resync", ref="again")
    snap = await a.wait(lambda f: f["type"] == "snapshot", start=mark)
    assert [i["user"] for i in snap["items"]] == [bob]
    await a.close()


async def test_client_errors_and_limits(deployment, http, uid) -> None:
    a = await Client.connect(http, deployment.url(0), f"{uid}a")
    bad = await a.request(op="set_status", presence="sleeping")
    assert bad["type"] == "error" and bad["code"] == "bad_request"
    unknown = await a.request(op="dance")
    assert unknown["code"] == "bad_request" and unknown["ref"] == unknown["ref"]
    await a.ws.send_bytes(b"\x00\x01")
    binary = await a.wait(lambda f: f["type"] == "error" and f["ref"] is None)
    assert binary["code"] == "bad_request"
    await a.send(op="ping", ref=12)
    assert (await a.wait(lambda f: f.get("message", "").startswith("ref")))["ref"] is None
    await a.ws.send_str("x" * 9000)
    assert await a.wait_closed() == 1009

    b = await Client.connect(http, deployment.url(1), f"{uid}b")
    for _ in range(25):
        await b.ws.send_str("not json")
    assert await b.wait_closed() == 1008


async def test_unauthorized_before_upgrade(deployment, http, uid) -> None:
    now = int(time.time())
    bad_sub = jwt.encode({"sub": "bad user", "exp": now + 60}, JWT_SECRET, algorithm="HS256")
    expired = jwt.encode({"sub": uid, "exp": now - 3600}, JWT_SECRET, algorithm="HS256")
    no_exp = jwt.encode({"sub": uid}, JWT_SECRET, algorithm="HS256")
    other_key = jwt.encode({"sub": uid, "exp": now + 60}, "another-secret-" * 3, algorithm="HS256")
    for query in (
        "",
        "?token=garbage",
        *(f"?token={t}" for t in (bad_sub, expired, no_exp, other_key)),
    ):
        async with http.get(f"{deployment.url()}/v1/ws{query}") as reply:
            assert reply.status == 401
            body = await reply.json()
            assert body["code"] == "unauthorized" and body["message"]


async def test_celebrity_reaches_1000_sessions_on_both_nodes(deployment, http, uid) -> None:
    celeb = f"{uid}star"
    fans = [f"{uid}f{n}" for n in range(1000)]
    body = "\n".join(orjson.dumps({"user": f, "buddy": celeb}).decode() for f in fans)
    async with http.post(f"{deployment.url()}/v1/import", data=body, headers=API_HEADERS) as r:
        assert (await r.json()) == {"imported": 1000, "rejected": []}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as many:
        sem = asyncio.Semaphore(100)

        async def connect(n: int, fan: str) -> Client:
            async with sem:
                return await Client.connect(many, deployment.url(n % 2), fan)

        clients = await asyncio.gather(*(connect(n, f) for n, f in enumerate(fans)))
        star = await Client.connect(many, deployment.url(0), celeb)
        ack = await star.request(op="set_status", text="hello fans")
        version = ack["item"]["version"]
        sent = ack["item"]["updated_at"] / 1000
        await asyncio.gather(*(
            c.wait(lambda f: f["type"] == "status" and f["items"][0]["version"] >= version, 30)
            for c in clients
        ))  # fmt: skip
        latencies = []
        for c in clients:
            index = next(
                i for i, f in enumerate(c.frames)
                if f["type"] == "status" and f["items"][0]["version"] >= version
            )  # fmt: skip
            latencies.append(c.received_at[index] - sent)
        latencies.sort()
        print(
            f"\ncelebrity fan-out to 1000 sessions: median {latencies[500] * 1000:.1f} ms, "
            f"p99 {latencies[989] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
        )
        assert all(c.last(celeb)["version"] == version for c in clients)
        await asyncio.gather(*(c.close() for c in clients), star.close())
