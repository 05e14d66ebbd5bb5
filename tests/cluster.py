"""A real Redis Cluster on private ports: masters (and replicas), joined by redis-cli."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

import redis

from service.embedded_redis import RedisProcess, free_port


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port <= 55535 and _bindable(port + 10000):
            return port


class RedisCluster:
    def __init__(self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 1000) -> None:
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisProcess] = []

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[: self.masters])
        return f"redis+cluster://{seeds}"

    def start(self) -> RedisCluster:
        """Start the nodes and join them; on failure, stop those already started."""
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is needed to create a cluster")
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> RedisCluster:
        for _ in range(self.masters * (1 + self.replicas)):
            port = cluster_port()
            node = RedisProcess(
                port=port,
                data_dir=tempfile.mkdtemp(prefix="buddycast-cluster-"),
                extra_args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf",
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                    "--appendonly", "yes",
                ),
            )  # fmt: skip
            self.nodes.append(node.start())
        subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_ok()
        return self

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                if node.process is None:
                    continue
                try:
                    with redis.Redis(port=node.port) as client:
                        info = client.cluster("info")
                    states.append(info.get("cluster_state") == "ok")
                except redis.RedisError:
                    states.append(False)
            if states and all(states):
                return
            time.sleep(0.2)
        raise RuntimeError("cluster did not reach state ok")

    def master_of(self, key: str) -> RedisProcess:
        with redis.Redis(port=self.nodes[0].port) as client:
            slot = client.cluster("keyslot", key)
            slots = client.cluster("slots")
        for start, end, master, *_ in slots:
            if start <= slot <= end:
                port = int(master[1])
                return next(n for n in self.nodes if n.port == port)
        raise LookupError(key)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
            shutil.rmtree(node.data_dir, ignore_errors=True)
