"""100,000 bad frames against a real node: each is answered, memory stays flat, the node lives.

A session is closed with 1008 after more than 20 `bad_request` errors in 10 s, so the frames
go over many short sessions from many concurrent clients, in two ways:

- `abusive`: 21 bad frames a session, sent at once, so the node closes it with 1008 (and
  every 40th session ends with a frame over 8192 bytes instead: closed with 1009);
- `polite`: 20 bad frames a session, under the limit; the client waits for the 20 replies
  and closes the session itself.

Both send 100,000 bad frames; node RSS is measured after a warm-up of 5,000.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import psutil
import pytest
import redis

from tests.procs import token

pytestmark = pytest.mark.timeout(240)

TOTAL = 100_000
WARMUP = 5_000
CLIENTS = 24
LIMIT = 20  # more than 20 bad_request errors in 10 s close the session with 1008
OVERSIZED_EVERY = 40
MAX_GROWTH = 25 * 1024 * 1024

# Bad frames of every kind, each answered with bad_request, with the ref to expect.
BAD_FRAMES: list[tuple[str, str | bytes, str | None]] = [
    ("text", "not json", None),
    ("text", "", None),
    ("text", "\ufeff{}", None),
    ("text", "[" * 1000 + "]" * 1000, None),
    ("text", '{"op":"ping","ref":"r","x":' + "[" * 3000 + "]" * 3000 + "}", None),
    ("text", '{"op":"ping","ref":"' + "r" * 65 + '"}', None),
    ("text", '{"op":"ping","ref":' + json.dumps(list(range(1000))) + "}", None),
    ("text", '{"op":"set_status","ref":"t","text":"' + "x" * 7000 + '"}', "t"),
    ("text", '{"op":"set_status","ref":"a","avatar":"ftp://' + "y" * 3000 + '"}', "a"),
    ("text", '{"op":"set_status","ref":"p","presence":{"online":true}}', "p"),
    ("text", '{"op":"ping","ref":"n","x":NaN}', None),
    ("text", '{"op":"ping","ref":"u","unknown":"' + "\u00e9\N{GRINNING FACE}" * 900 + '"}', "u"),
    ("text", '{"op":"launch","ref":"o"}', "o"),
    ("text", json.dumps({"op": "ping", "ref": "k", **{f"k{n}": n for n in range(500)}}), "k"),
    ("text", "\x00\x01\x02\x7f" * 500, None),
    ("binary", b"\xff\xfe" * 2000, None),
    ("binary", b'{"op":"ping","ref":"b"}', None),
]
OVERSIZED = '{"op":"ping","ref":"big","x":"' + "z" * 9000 + '"}'


class Storm:
    """What was sent and what came back."""

    def __init__(self, abusive: bool) -> None:
        self.abusive = abusive
        self.frames = 0
        self.errors = 0
        self.sessions = 0
        self.closes: dict[int, int] = {}
        self.cursor = 0
        # Sessions that did not get a reply to every bad frame before the closing one:
        # (close code, frames sent, error replies received) -> sessions.
        self.short: dict[tuple[int, int, int], int] = {}

    def next_frames(self, n: int) -> list[tuple[str, str | bytes, str | None]]:
        start = self.cursor
        self.cursor += n
        return [BAD_FRAMES[(start + i) % len(BAD_FRAMES)] for i in range(n)]


async def _session(http: aiohttp.ClientSession, url: str, user: str, storm: Storm) -> None:
    ws = await http.ws_connect(f"{url}/v1/ws?token={token(user)}")
    try:
        hello = await ws.receive_json(timeout=10)
        assert hello["type"] == "hello", hello
        assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
        storm.sessions += 1
        oversized = storm.abusive and storm.sessions % OVERSIZED_EVERY == 0
        count = 5 if oversized else LIMIT + 1 if storm.abusive else LIMIT
        frames = storm.next_frames(count)
        for kind, payload, _ in frames:
            if kind == "text":
                assert isinstance(payload, str)
                await ws.send_str(payload)
            else:
                assert isinstance(payload, bytes)
                await ws.send_bytes(payload)
        if oversized:
            await ws.send_str(OVERSIZED)
        storm.frames += len(frames) + oversized
        replies = 0
        while storm.abusive or replies < len(frames):
            message = await ws.receive(timeout=15)
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(message.data)
            assert frame["type"] == "error" and frame["code"] == "bad_request", frame
            assert frame["ref"] == frames[replies][2], (frames[replies][1][:80], frame)
            replies += 1
        storm.errors += replies
        if not storm.abusive:
            return
        assert message.type is aiohttp.WSMsgType.CLOSE, message
        code = int(message.data)
        storm.closes[code] = storm.closes.get(code, 0) + 1
        assert code == (1009 if oversized else 1008), (code, replies)
        # Every frame before the closing one is answered (the 21st bad frame may be too).
        if replies < len(frames) - (not oversized):
            key = (code, len(frames) + oversized, replies)
            storm.short[key] = storm.short.get(key, 0) + 1
    finally:
        await ws.close()


async def _storm(url: str, frames: int, storm: Storm) -> float:
    """Send about `frames` bad frames from CLIENTS concurrent clients; the seconds it took."""
    target = storm.frames + frames
    started = time.monotonic()

    async def client(n: int) -> None:
        async with aiohttp.ClientSession() as http:
            while storm.frames < target:
                await _session(http, url, f"storm{n}", storm)

    await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    return time.monotonic() - started


def _registered_sessions(redis_url: str) -> dict[str, int]:
    """Every user with sessions still registered in Redis, and how many."""
    client = redis.Redis.from_url(redis_url)
    try:
        counts = {key.decode(): int(client.hlen(key)) for key in client.scan_iter(match="*:ss:*")}
        return {key: n for key, n in counts.items() if n}
    finally:
        client.close()


@pytest.mark.parametrize("abusive", [True, False], ids=["abusive", "polite"])
async def test_100k_bad_frames_keep_node_memory_flat(make_deployment, http, abusive) -> None:
    dep = make_deployment()
    dep.add("node")
    url = dep.url()
    node = psutil.Process(dep.nodes[0].process.pid)
    storm = Storm(abusive)

    await _storm(url, WARMUP, storm)
    await asyncio.sleep(0.5)
    rss_before = node.memory_info().rss
    fds_before = node.num_fds()
    warm = storm.frames

    elapsed = await _storm(url, TOTAL - warm, storm)
    await asyncio.sleep(0.5)
    rss_after = node.memory_info().rss
    fds_after = node.num_fds()
    sent = storm.frames - warm
    growth = rss_after - rss_before
    print(
        f"\n[{'abusive' if abusive else 'polite'}] {storm.frames} bad frames in "
        f"{storm.sessions} sessions ({warm} to warm up); {sent} measured in {elapsed:.1f} s "
        f"= {sent / elapsed:.0f} frames/s; {storm.errors} error replies; closes {storm.closes}"
        f"\nsessions short of replies, by (close code, frames, replies): "
        f"{dict(sorted(storm.short.items()))}"
        f"\nnode RSS {rss_before / 2**20:.1f} MiB -> {rss_after / 2**20:.1f} MiB "
        f"(growth {growth / 2**20:+.1f} MiB); open fds {fds_before} -> {fds_after}"
    )

    assert storm.frames >= TOTAL
    assert dep.nodes[0].running, dep.logs()
    async with http.get(f"{url}/readyz") as reply:
        assert reply.status == 200, await reply.text()
    log = dep.nodes[0].log_path.read_text(errors="replace")
    assert "Traceback" not in log, dep.nodes[0].log_tail(60)
    # Every session was deregistered: none is left counted against its user's 16.
    for _ in range(25):
        left = _registered_sessions(dep.redis_url)
        if not left:
            break
        await asyncio.sleep(0.2)
    assert not left, f"sessions still registered after all were closed: {left}"
    assert fds_after - fds_before < 50, (fds_before, fds_after)
    assert growth < MAX_GROWTH, f"node RSS grew {growth / 2**20:.1f} MiB over {sent} bad frames"
    # PROTOCOL.md: a bad frame gets an error frame and "the session stays open"; only the
    # one past the limit closes it, so the replies to the earlier ones must not be lost.
    short = sum(storm.short.values())
    assert not short, (
        f"{short} of {storm.sessions} sessions were closed before the error replies to their "
        f"earlier bad frames were sent: {storm.short}"
    )
