"""Real buddycast processes for end-to-end and fault tests, and a recording WebSocket client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from service.auth import mint_token
from service.embedded_redis import free_port

JWT_SECRET = "e2e-secret-" + "x" * 24
API_KEY = "e2e-api-key-" + "k" * 24
BUDDYCAST = [sys.executable, "-m", "service"]

Frame = dict[str, Any]


class Proc:
    """One buddycast process with its log file."""

    def __init__(self, role: str, name: str, env: dict[str, str], workdir: Path) -> None:
        self.role = role
        self.name = name
        self.env = env
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*BUDDYCAST, self.role], env=self.env, cwd=self.workdir, stdout=log, stderr=log,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        return self

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout_s: float = 20.0) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        self.wait()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Deployment:
    """A private deployment: nodes and workers sharing one Redis and one database."""

    def __init__(self, workdir: Path, redis_url: str, database_url: str, **settings: Any) -> None:
        self.workdir = workdir
        self.redis_url = redis_url
        self.database_url = database_url
        self.settings = {
            "OFFLINE_GRACE_S": "1",
            "NODE_TTL_S": "3",
            "SHARDS": "4",
            "HEARTBEAT_S": "20",
            "CONNECT_RATE_PER_IP": "100000",
            "MAX_SESSIONS_PER_USER": "16",
            "LOG_LEVEL": "info",
            **{k.upper(): str(v) for k, v in settings.items()},
        }
        self.nodes: list[Proc] = []
        self.workers: list[Proc] = []
        self.ports: dict[str, int] = {}

    def env(self, name: str, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDYCAST_")}
        env.update({f"BUDDYCAST_{k}": v for k, v in self.settings.items()})
        env.update(
            BUDDYCAST_REDIS_URL=self.redis_url,
            BUDDYCAST_DATABASE_URL=self.database_url,
            BUDDYCAST_JWT_SECRET=JWT_SECRET,
            BUDDYCAST_API_KEY=API_KEY,
            BUDDYCAST_HOST="127.0.0.1",
            BUDDYCAST_PORT=str(port),
            BUDDYCAST_METRICS_PORT=str(port),
            BUDDYCAST_NODE_ID=f"{name}-{uuid.uuid4().hex[:6]}",
        )
        return env

    def migrate(self) -> None:
        subprocess.run(
            [*BUDDYCAST, "migrate"], env=self.env("migrate", 0), cwd=self.workdir, check=True,
            capture_output=True, timeout=60,
        )  # fmt: skip

    def add(self, role: str, name: str | None = None) -> Proc:
        """Start one more node or worker and wait until it is ready."""
        group = self.nodes if role == "node" else self.workers
        name = name or f"{role}{len(group)}"
        port = self.ports.get(name) or free_port()
        self.ports[name] = port
        proc = Proc(role, name, self.env(name, port), self.workdir).start()
        group.append(proc)
        wait_ready(port, proc)
        return proc

    def restart(self, proc: Proc) -> Proc:
        """Start a stopped process again under the same name and port (new node id)."""
        group = self.nodes if proc.role == "node" else self.workers
        fresh = Proc(proc.role, proc.name, self.env(proc.name, self.ports[proc.name]), self.workdir)
        group[group.index(proc)] = fresh.start()
        wait_ready(self.ports[proc.name], fresh)
        return fresh

    def url(self, node: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[self.nodes[node].name]}"

    def stop(self) -> None:
        """Stop every process; they drain side by side, not one after another."""
        procs = self.nodes + self.workers
        for proc in procs:
            proc.signal(signal.SIGTERM)
        for proc in procs:
            proc.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in self.nodes + self.workers)


def wait_ready(port: int, proc: Proc, timeout_s: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.running:
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready after {timeout_s}s:\n{proc.log_tail()}")


def token(user: str) -> str:
    return mint_token(user, JWT_SECRET)


API_HEADERS = {"Authorization": f"Bearer {API_KEY}"}


class Client:
    """A WebSocket session that records every frame it receives."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, user: str) -> None:
        self.ws = ws
        self.user = user
        self.frames: list[Frame] = []
        self.received_at: list[float] = []
        self.close_code: int | None = None
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls, http: aiohttp.ClientSession, base_url: str, user: str, **kwargs: Any
    ) -> Client:
        ws = await http.ws_connect(f"{base_url}/v1/ws?token={token(user)}", **kwargs)
        client = cls(ws, user)
        await client.wait(lambda f: f["type"] == "snapshot")
        return client

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.frames.append(orjson.loads(message.data))
                self.received_at.append(time.time())
                self._changed.set()
        self.close_code = self.ws.close_code
        self._changed.set()

    async def send(self, **frame: Any) -> None:
        await self.ws.send_str(orjson.dumps(frame).decode())

    async def wait(
        self, predicate: Callable[[Frame], bool], timeout_s: float = 10.0, start: int = 0
    ) -> Frame:
        """The first frame from index `start` that matches, waiting up to `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        index = start
        while True:
            while index < len(self.frames):
                if predicate(self.frames[index]):
                    return self.frames[index]
                index += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._reader.done():
                raise TimeoutError(f"{self.user}: no matching frame; got {self.frames[-5:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_closed(self, timeout_s: float = 10.0) -> int | None:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout_s)
        return self.close_code

    async def request(self, timeout_s: float = 10.0, **frame: Any) -> Frame:
        """Send a frame with a fresh ref and wait for the reply carrying it."""
        ref = uuid.uuid4().hex[:12]
        start = len(self.frames)
        await self.send(ref=ref, **frame)
        return await self.wait(lambda f: f.get("ref") == ref, timeout_s, start)

    def items(self, subject: str) -> list[dict[str, Any]]:
        """Every item about `subject` in order, from snapshots, status and list frames."""
        found = []
        for frame in self.frames:
            for item in frame.get("items", []) + frame.get("added", []):
                if item["user"] == subject:
                    found.append(item)
        return found

    def last(self, subject: str) -> dict[str, Any] | None:
        items = self.items(subject)
        return items[-1] if items else None

    def subjects(self) -> set[str]:
        seen = set()
        for frame in self.frames:
            for item in frame.get("items", []) + frame.get("added", []):
                seen.add(item["user"])
        return seen

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


def stalled_client(base_url: str, user: str, recv_buffer: int = 4096) -> socket.socket:
    """A WebSocket client that completes the upgrade and then never reads again."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /v1/ws?token={token(user)} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed during the upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.decode(errors="replace"))
    return sock


async def mesh(http: aiohttp.ClientSession, dep: Deployment, users: list[str]) -> None:
    """Every user watches every other user."""
    lines = [orjson.dumps({"user": a, "buddy": b}).decode() for a in users for b in users if a != b]
    async with http.post(f"{dep.url()}/v1/import", data="\n".join(lines), headers=API_HEADERS) as r:
        assert (await r.json())["imported"] == len(lines)


async def converge(clients: list[Client], acked: dict[str, int], timeout_s: float) -> None:
    """Every client's last version of every other user equals that user's last ack."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        behind = [
            (c.user, u, (c.last(u) or {}).get("version"), v)
            for c in clients
            for u, v in acked.items()
            if u != c.user and (c.last(u) or {}).get("version") != v
        ]
        if not behind:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{len(behind)} (watcher, subject) pairs behind: {behind[:5]}")
        await asyncio.sleep(0.2)
