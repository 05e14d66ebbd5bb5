"""Property: over random graphs, status changes and list edits, nobody ever receives the
status of a user outside their list, and every session converges to the last version."""

from __future__ import annotations

import asyncio
import random
import uuid

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.procs import API_HEADERS, Client, Deployment

USERS = 8


def check_privacy(client: Client, granted: set[str]) -> None:
    """Replay the frames: items only of users in the list as the frames define it."""
    allowed: set[str] = set()
    for frame in client.frames:
        if frame["type"] == "snapshot":
            allowed = {i["user"] for i in frame["items"]}
            assert allowed <= granted, (client.user, allowed - granted)
        elif frame["type"] == "list":
            added = {i["user"] for i in frame["added"]}
            assert added <= granted, (client.user, added - granted)
            allowed = (allowed | added) - set(frame["removed"])
        elif frame["type"] == "status":
            for item in frame["items"]:
                assert item["user"] in allowed, (client.user, item, sorted(allowed))


async def scenario(dep: Deployment, edges: set[tuple[int, int]], ops: list[tuple]) -> None:
    prefix = uuid.uuid4().hex[:6]
    names = [f"{prefix}u{n}" for n in range(USERS)]
    lists: dict[str, set[str]] = {n: set() for n in names}
    granted: dict[str, set[str]] = {n: set() for n in names}
    for a, b in edges:
        lists[names[a]].add(names[b])
        granted[names[a]].add(names[b])
    async with aiohttp.ClientSession() as http:
        if edges:
            body = "\n".join(
                orjson.dumps({"user": names[a], "buddy": names[b]}).decode() for a, b in edges
            )
            async with http.post(f"{dep.url()}/v1/import", data=body, headers=API_HEADERS) as r:
                assert (await r.json())["imported"] == len(edges)
        clients = [await Client.connect(http, dep.url(n % 2), name) for n, name in enumerate(names)]
        for client in clients:
            snap = next(f for f in client.frames if f["type"] == "snapshot")
            assert {i["user"] for i in snap["items"]} == lists[client.user]

        last_version: dict[str, int] = {}
        sent = {n: 0 for n in names}

        async def run_op(op: tuple) -> None:
            kind, a, b = op
            owner, buddy = names[a], names[b]
            if kind == "remove" and lists[owner]:
                # Aim removals at edges that exist.
                buddy = sorted(lists[owner])[b % len(lists[owner])]
            if kind == "status":
                if sent[owner] >= 9:  # stay under the burst of 10
                    return
                sent[owner] += 1
                reply = await clients[a].request(op="set_status", text=f"t{random.random()}")
                assert reply["type"] == "ack", reply
                version = reply["item"]["version"]
                last_version[owner] = max(last_version.get(owner, 0), version)
            elif owner != buddy:
                method = "PUT" if kind == "add" else "DELETE"
                if kind == "add":
                    granted[owner].add(buddy)
                url = f"{dep.url(a % 2)}/v1/users/{owner}/buddies/{buddy}"
                async with http.request(method, url, headers=API_HEADERS) as r:
                    assert r.status == 204
                if kind == "add":
                    lists[owner].add(buddy)
                else:
                    lists[owner].discard(buddy)

        # Status changes run concurrently; list edits of one owner keep their order.
        await asyncio.gather(*(run_op(op) for op in ops if op[0] == "status"),
                             *(run_op(op) for op in ops if op[0] != "status"))  # fmt: skip

        # Everyone changes once more after the list edits: a session still wired to a
        # removed buddy would receive this.
        await asyncio.gather(*(run_op(("status", n, n)) for n in range(USERS)))

        async def converged(client: Client) -> None:
            for _ in range(100):
                if all(
                    (client.last(x) or {}).get("version", 0) >= last_version.get(x, 0)
                    for x in lists[client.user]
                ):
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"{client.user} did not converge: {client.frames[-5:]}")

        await asyncio.gather(*(converged(c) for c in clients))
        await asyncio.sleep(0.3)
        for client in clients:
            check_privacy(client, granted[client.user])
            for x in lists[client.user]:
                versions = [i["version"] for i in client.items(x)]
                # Within one subject's sequence, versions never go back.
                assert versions == sorted(versions), (client.user, x, versions)
        await asyncio.gather(*(c.close() for c in clients))


graphs = st.sets(
    st.tuples(st.integers(0, USERS - 1), st.integers(0, USERS - 1)).filter(lambda e: e[0] != e[1]),
    max_size=30,
)
operations = st.lists(
    st.tuples(
        st.sampled_from(["status", "status", "add", "remove"]),
        st.integers(0, USERS - 1),
        st.integers(0, USERS - 1),
    ),
    max_size=40,
)


@pytest.mark.timeout(300)
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(edges=graphs, ops=operations)
def test_nobody_sees_a_user_outside_their_list(deployment, edges, ops) -> None:
    asyncio.run(scenario(deployment, edges, ops))
