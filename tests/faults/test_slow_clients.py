"""A client that stops reading must not cost the node memory or delay anyone else."""

from __future__ import annotations

import asyncio
import re
import signal
import time

import psutil
import pytest

from tests.procs import API_HEADERS, Client, stalled_client

pytestmark = pytest.mark.timeout(180)

AVATAR = "https://example.com/" + "a" * 2000


async def slow_closes(http, url: str) -> float:
    """The node's count of sessions closed for not keeping up."""
    async with http.get(f"{url}/metrics") as reply:
        text = await reply.text()
    found = re.search(r"^buddycast_slow_client_closes_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_stalled_reader_is_closed_with_1013_and_memory_stays_flat(make_deployment, http):
    dep = make_deployment(slow_client_s=2)
    dep.add("node")
    dep.add("worker")
    buddies = [f"b{n}" for n in range(10)]
    for buddy in buddies:
        for owner in ("stalled", "reader"):
            url = f"{dep.url()}/v1/users/{owner}/buddies/{buddy}"
            async with http.put(url, headers=API_HEADERS) as r:
                assert r.status == 204
    node = psutil.Process(dep.nodes[0].process.pid)
    reader = await Client.connect(http, dep.url(), "reader")
    sock = stalled_client(dep.url(), "stalled")
    rss_before = node.memory_info().rss

    async def change(buddy: str, n: int) -> int:
        body = {"text": f"{n:0>270}", "avatar": AVATAR}
        async with http.put(
            f"{dep.url()}/v1/users/{buddy}/status", json=body, headers=API_HEADERS
        ) as r:
            assert r.status == 200
            return int((await r.json())["version"])

    lags = []
    last: dict[str, int] = {}
    for n in range(1000):  # 10 buddies x 1000 = 10,000 changes of ~2.4 KB each
        versions = await asyncio.gather(*(change(b, n) for b in buddies))
        last.update(zip(buddies, versions, strict=True))
        if n % 100 == 99:
            sent = time.monotonic()
            await reader.wait(
                lambda f: (
                    f["type"] == "status"
                    and any(i["user"] == "b9" and i["version"] >= last["b9"] for i in f["items"])
                ),
                timeout_s=5,
            )
            lags.append(time.monotonic() - sent)
    rss_after = node.memory_info().rss
    # Reading now would end the stall under test: first wait for the node to give up on
    # the session (BUDDYCAST_SLOW_CLIENT_S after the stall began, at its next check).
    for _ in range(50):
        if await slow_closes(http, dep.url()) >= 1:
            break
        await asyncio.sleep(0.2)
    sock.setblocking(False)
    closed = False
    deadline = time.monotonic() + 10
    # Drain what the kernel holds; the server's last frame must be a 1013 close.
    data = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            await asyncio.sleep(0.05)
            continue
        if not chunk:
            closed = True
            break
        data += chunk
    sock.close()
    assert closed, "the stalled session was not closed"
    close_frame = b"\x88\x02" + (1013).to_bytes(2, "big")
    assert close_frame in data[-64:] or (b"\x88" in data[-64:] and b"\x03\xf5" in data[-64:])
    growth_mb = (rss_after - rss_before) / 2**20
    print(f"\nnode RSS growth {growth_mb:.1f} MiB; reader lag max {max(lags) * 1000:.0f} ms")
    assert growth_mb < 30
    assert max(lags) < 1.0
    await reader.close()


async def test_node_stops_in_bounded_time_with_unresponsive_clients(make_deployment, http):
    dep = make_deployment()
    dep.add("node")
    dep.add("worker")
    socks = [stalled_client(dep.url(), f"mute{n}") for n in range(5)]
    started = time.monotonic()
    dep.nodes[0].signal(signal.SIGTERM)
    code = await asyncio.to_thread(dep.nodes[0].wait, 30)
    took = time.monotonic() - started
    for sock in socks:
        sock.close()
    assert code == 0 and took < 15, (code, took)
