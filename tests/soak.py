"""`make soak`: steady load for a while, one process killed every minute (a node, a worker,
Redis, in turn), then a report of what was acked, delivered and lost, and how long
watchers took to converge. Not part of `make test`.

    python -m tests.soak --minutes 10 --users 200 --rate 50 --fsync always
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from service.embedded_redis import RedisProcess
from tests.procs import API_HEADERS, Client, Deployment

LOADERS = 4


class Watcher:
    """One user's session that reconnects by itself and keeps every item it receives."""

    def __init__(self, user: str, dep: Deployment, http: aiohttp.ClientSession) -> None:
        self.user = user
        self.dep = dep
        self.http = http
        self.client: Client | None = None
        # subject -> (versions, receipt times), both increasing
        self.seen: dict[str, tuple[list[int], list[float]]] = {}
        self.reconnects = 0

    def absorb(self, client: Client, start: int) -> int:
        for frame, at in zip(client.frames[start:], client.received_at[start:], strict=True):
            for item in frame.get("items", []) + frame.get("added", []):
                versions, times = self.seen.setdefault(item["user"], ([], []))
                if not versions or item["version"] > versions[-1]:
                    versions.append(item["version"])
                    times.append(at)
        return len(client.frames)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            live = [n for n, p in enumerate(self.dep.nodes) if p.running]
            try:
                self.client = await Client.connect(
                    self.http, self.dep.url(random.choice(live or [0])), self.user
                )
            except (aiohttp.ClientError, TimeoutError, OSError):
                await asyncio.sleep(0.2)
                continue
            read = 0
            while not stop.is_set() and self.client.close_code is None:
                read = self.absorb(self.client, read)
                await asyncio.sleep(0.05)
                if self.client.ws.closed:
                    break
            self.absorb(self.client, read)
            if not stop.is_set():
                self.reconnects += 1
        if self.client is not None:
            await self.client.close()

    def first_at_least(self, subject: str, version: int) -> float | None:
        versions, times = self.seen.get(subject, ([], []))
        index = bisect.bisect_left(versions, version)
        return times[index] if index < len(versions) else None


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="buddycast-soak-"))
    redis = RedisProcess(extra_args=("--appendonly", "yes", "--appendfsync", args.fsync)).start()
    dep = Deployment(
        workdir, redis.url, f"sqlite+aiosqlite:///{workdir / 'db.sqlite'}",
        offline_grace_s=5, node_ttl_s=5, claim_idle_s=3,
    )  # fmt: skip
    dep.migrate()
    for role in ("node", "node", "worker", "worker"):
        dep.add(role)
    rng = random.Random(args.seed)
    users = [f"s{n}" for n in range(args.users)]
    lists: dict[str, set[str]] = {u: set() for u in users}
    for user in users:
        for buddy in rng.sample(users, k=min(len(users) - 1, args.mean_list)):
            if buddy != user:
                lists[user].add(buddy)
                lists[buddy].add(user)
    acked: list[tuple[str, int, float]] = []
    failed = 0
    kills: list[str] = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            body = "\n".join(
                orjson.dumps({"user": u, "buddy": b}).decode() for u in users for b in lists[u]
            )
            async with http.post(f"{dep.url()}/v1/import", data=body, headers=API_HEADERS) as r:
                imported = (await r.json())["imported"]
            stop = asyncio.Event()
            watchers = {u: Watcher(u, dep, http) for u in users}
            tasks = [asyncio.create_task(w.run(stop)) for w in watchers.values()]
            await asyncio.sleep(3)

            async def load() -> None:
                nonlocal failed
                n = 0
                while not stop.is_set():
                    user = users[n % len(users)]
                    n += 1
                    client = watchers[user].client
                    if client is None or client.ws.closed:
                        await asyncio.sleep(LOADERS / args.rate)
                        continue
                    try:
                        reply = await client.request(op="set_status", text=f"n{n}", timeout_s=5)
                        if reply["type"] == "ack":
                            acked.append((user, reply["item"]["version"], time.time()))
                        else:
                            failed += 1
                    except (TimeoutError, ConnectionError, RuntimeError):
                        failed += 1
                    await asyncio.sleep(LOADERS / args.rate)

            loaders = [asyncio.create_task(load()) for _ in range(LOADERS)]
            victims = ["node", "worker", "redis"]
            started = time.monotonic()
            minute = 0
            while time.monotonic() - started < args.minutes * 60:
                await asyncio.sleep(min(60, args.minutes * 60 - (time.monotonic() - started)))
                if time.monotonic() - started >= args.minutes * 60 - 1:
                    break
                kind = victims[minute % 3]
                minute += 1
                kills.append(f"{time.monotonic() - started:.0f}s {kind}")
                print(f"[{time.monotonic() - started:5.0f}s] SIGKILL {kind}", file=sys.stderr)
                if kind == "redis":
                    redis.stop(kill=True)
                    await asyncio.sleep(2)
                    redis.start()
                else:
                    group = dep.nodes if kind == "node" else dep.workers
                    proc = group[(minute // 3) % len(group)]
                    proc.signal(signal.SIGKILL)
                    await asyncio.to_thread(proc.wait, 10)
                    await asyncio.sleep(2)
                    await asyncio.to_thread(dep.restart, proc)
            for task in loaders:
                task.cancel()
            await asyncio.gather(*loaders, return_exceptions=True)
            settle_started = time.time()
            last_acked: dict[str, int] = {}
            for user, version, _ in acked:
                last_acked[user] = max(last_acked.get(user, 0), version)
            # Settle: every watcher must reach each buddy's last acked version.
            for _ in range(300):
                behind = [
                    (w.user, s) for w in watchers.values() for s in lists[w.user]
                    if s in last_acked and (w.seen.get(s, ([0], []))[0] or [0])[-1] < last_acked[s]
                ]  # fmt: skip
                if not behind:
                    break
                await asyncio.sleep(0.2)
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        dep.stop()
        redis.cleanup()

    delays = []
    missing = 0
    for user, version, at in acked:
        for watcher_name in lists[user]:
            received = watchers[watcher_name].first_at_least(user, version)
            if received is None:
                missing += 1
            else:
                delays.append(max(0.0, received - at))
    delays.sort()
    return {
        "minutes": args.minutes,
        "users": args.users,
        "edges": imported,
        "redis_appendfsync": args.fsync,
        "kills": kills,
        "changes_acked": len(acked),
        "changes_refused_or_unanswered": failed,
        "deliveries_expected": sum(len(lists[u]) for u, _, _ in acked),
        "deliveries_received": len(delays),
        "lost": missing,
        "reconnects": sum(w.reconnects for w in watchers.values()),
        "convergence_p50_s": delays[len(delays) // 2] if delays else None,
        "convergence_p99_s": delays[int(len(delays) * 0.99)] if delays else None,
        "convergence_worst_s": delays[-1] if delays else None,
        "settle_s": time.time() - settle_started,
        "behind_at_end": len(behind),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--mean-list", type=int, default=10)
    parser.add_argument("--rate", type=float, default=50, help="changes per second in all")
    parser.add_argument("--fsync", choices=["always", "everysec"], default="always")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = asyncio.run(soak(args))
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    sys.exit(1 if report["lost"] or report["behind_at_end"] else 0)


if __name__ == "__main__":
    main()
