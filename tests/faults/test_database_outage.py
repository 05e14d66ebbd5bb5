"""PostgreSQL goes away: list edits answer 503, status changes keep flowing, and the
persist group catches up with no gap when the database returns."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from tests.conftest import POSTGRES_ADMIN_URL, unavailable
from tests.procs import API_HEADERS, Client
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def postgres_behind_proxy():
    """A fresh database reached through a proxy the test can cut."""
    name = f"buddycast_outage_{uuid.uuid4().hex[:8]}"
    try:
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable(f"PostgreSQL is not reachable: {exc}")
    await admin.execute(f'CREATE DATABASE "{name}"')
    port = int(POSTGRES_ADMIN_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(port).start()
    user = POSTGRES_ADMIN_URL.split("//", 1)[1].split("@", 1)[0]
    direct = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield proxy, f"postgresql+asyncpg://{user}@127.0.0.1:{proxy.port}/{name}", direct
    proxy.close()
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


async def test_postgres_outage(make_deployment, http, postgres_behind_proxy) -> None:
    proxy, database_url, direct_url = postgres_behind_proxy
    dep = make_deployment(database_url=database_url)
    dep.add("node")
    dep.add("worker")
    async with http.put(f"{dep.url()}/v1/friendships/alice/bob", headers=API_HEADERS) as r:
        assert r.status == 204
    alice = await Client.connect(http, dep.url(), "alice")
    bob = await Client.connect(http, dep.url(), "bob")
    await alice.wait(lambda f: f["type"] == "status" and f["items"][0]["presence"] == "online")

    proxy.cut()
    async with http.put(f"{dep.url()}/v1/users/alice/buddies/carol", headers=API_HEADERS) as r:
        assert r.status == 503
        assert (await r.json())["code"] == "unavailable"
    async with http.get(f"{dep.url()}/readyz") as r:
        assert r.status == 503
    last = None
    for n in range(8):
        reply = await bob.request(op="set_status", text=f"during the outage {n}")
        assert reply["type"] == "ack", reply
        last = reply["item"]
    assert last is not None
    await alice.wait(
        lambda f: f["type"] == "status" and f["items"][0]["version"] == last["version"]
    )
    await asyncio.sleep(1.0)

    proxy.start()
    conn = await asyncpg.connect(direct_url)
    try:
        for _ in range(100):
            row = await conn.fetchrow("SELECT version, text FROM statuses WHERE user_id = 'bob'")
            if row is not None and row["version"] == last["version"]:
                break
            await asyncio.sleep(0.2)
        assert row is not None and row["version"] == last["version"], row
        assert row["text"] == last["text"]
    finally:
        await conn.close()
    async with http.put(f"{dep.url()}/v1/users/alice/buddies/carol", headers=API_HEADERS) as r:
        assert r.status == 204
    await alice.wait(lambda f: f["type"] == "list")
    await alice.close()
    await bob.close()
