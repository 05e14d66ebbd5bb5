"""The bench's own deployment: a private redis-server, nodes sharing one port, workers.

Every process writes its log into the work folder; `stop()` ends them all, nodes first
so their sessions close before the workers and Redis go.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from service.embedded_redis import RedisProcess, free_port
from service.errors import BuddycastError

BUDDYCAST = [sys.executable, "-m", "service"]
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
PR_SET_PDEATHSIG = 1


class SetupError(BuddycastError):
    """The deployment could not be started (exit code 2)."""


@dataclass
class ServerProcess:
    """One process the bench started: its role, name, node id and log."""

    role: str
    name: str
    node_id: str
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen is not None else 0

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Deployment:
    """Nodes and workers on a private Redis and a SQLite file (or `database_url`)."""

    workdir: Path
    nodes: int
    workers: int
    max_buddies: int
    database_url: str | None = None
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    port: int = field(default_factory=free_port)
    redis: RedisProcess | None = None
    processes: list[ServerProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.workdir / 'buddycast.db'}"

    def env(self, node_id: str, metrics_port: int) -> dict[str, str]:
        # The caller's BUDDYCAST_* must not leak in: this deployment is private.
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDYCAST_")}
        env.update(
            BUDDYCAST_REDIS_URL=self.redis.url if self.redis else "",
            BUDDYCAST_DATABASE_URL=self.db_url,
            BUDDYCAST_JWT_SECRET=self.jwt_secret,
            BUDDYCAST_API_KEY=self.api_key,
            BUDDYCAST_HOST="127.0.0.1",
            BUDDYCAST_PORT=str(self.port),
            BUDDYCAST_REUSE_PORT="true",
            BUDDYCAST_METRICS_PORT=str(metrics_port),
            BUDDYCAST_NODE_ID=node_id,
            BUDDYCAST_MAX_BUDDIES=str(self.max_buddies),
            # Every bench session comes from 127.0.0.1: the per-address limit would
            # turn the connect storm away.
            BUDDYCAST_CONNECT_RATE_PER_IP="1000000",
            BUDDYCAST_LOG_LEVEL="info",
        )
        return env

    def start(self) -> Deployment:
        """Start Redis, migrate, start nodes and workers; wait until each is ready."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "redis").mkdir(exist_ok=True)
        try:
            self.redis = RedisProcess(data_dir=str(self.workdir / "redis")).start()
        except BuddycastError as exc:
            raise SetupError(f"redis-server: {exc}") from exc
        self._migrate()
        for i in range(self.nodes):
            self._spawn("node", f"node{i}", self.port)
        for i in range(self.workers):
            self._spawn("worker", f"worker{i}", free_port())
        deadline = time.monotonic() + READY_TIMEOUT_S
        for proc in self.processes:
            self._wait_ready(proc, deadline)
        return self

    def _migrate(self) -> None:
        log = self.workdir / "migrate.log"
        with log.open("ab") as out:
            done = subprocess.run(
                [*BUDDYCAST, "migrate"], env=self.env("migrate", 0), cwd=self.workdir,
                stdout=out, stderr=out, stdin=subprocess.DEVNULL, timeout=120, check=False,
            )  # fmt: skip
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-500:]
            raise SetupError(f"buddycast migrate failed:\n{tail}")

    def _spawn(self, role: str, name: str, port: int) -> None:
        node_id = f"bench-{name}-{uuid.uuid4().hex[:6]}"
        proc = ServerProcess(role, name, node_id, self.workdir / f"{name}.log", port=port)
        with proc.log_path.open("ab") as log:
            # A session of its own: Ctrl-C reaches the bench only, which then stops
            # these in order.
            proc.popen = subprocess.Popen(
                [*BUDDYCAST, role], env=self.env(node_id, port), cwd=self.workdir,
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        self.processes.append(proc)

    def _wait_ready(self, proc: ServerProcess, deadline: float) -> None:
        # Nodes share a port, so /readyz on it may answer from any of them: first wait
        # for this process's own listening socket, then for /readyz.
        while time.monotonic() < deadline:
            if not proc.running:
                raise SetupError(f"{proc.name} exited at start:\n{proc.log_tail()}")
            if _listens(proc.pid, proc.port) and _ready(proc.port):
                return
            time.sleep(0.1)
        raise SetupError(f"{proc.name} not ready after {READY_TIMEOUT_S:.0f} s:\n{proc.log_tail()}")

    def stop(self) -> None:
        """Stop nodes, then workers, then Redis; kill what does not stop in time."""
        for role in ("node", "worker"):
            group = [p for p in self.processes if p.role == role]
            for proc in group:
                if proc.running and proc.popen is not None:
                    proc.popen.send_signal(signal.SIGTERM)
            for proc in group:
                if proc.popen is None:
                    continue
                try:
                    proc.popen.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
                    proc.popen.wait()
        if self.redis is not None:
            self.redis.stop()

    def redis_version(self) -> str:
        if self.redis is None:
            return "n/a"
        return redis_version(self.redis.url)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the bench dies, even by SIGKILL (Linux only)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _listens(pid: int, port: int) -> bool:
    try:
        sockets = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return False
    return any(s.status == psutil.CONN_LISTEN and s.laddr.port == port for s in sockets)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def redis_version(url: str) -> str:
    """`redis_version` from INFO, or "n/a" when Redis cannot be asked."""
    import redis

    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(url, socket_timeout=2)
        try:
            return str(client.info("server").get("redis_version", "n/a"))
        finally:
            client.close()
    return "n/a"
