"""A real Redis Cluster on private ports: masters (and replicas), joined by redis-cli."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable

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
        self._wait_replicas_synced()
        return self

    def _wait_replicas_synced(self, timeout_s: float = 30.0) -> None:
        """Until every replica has its master's data: one that never synced refuses to
        take over (its data counts as too old), and the slots stay down for good."""

        def synced(client: redis.Redis) -> bool:
            info = client.info("replication")
            return info["role"] != "slave" or info.get("master_link_status") == "up"

        self._wait_every_live_node(synced, "replicas did not sync with their masters", timeout_s)

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        self._wait_every_live_node(_state_ok, "cluster did not reach state ok", timeout_s)

    def wait_failed_over(self, dead: RedisProcess, timeout_s: float = 30.0) -> None:
        """Until every live node is ok and none lists `dead` as the master of a slot."""

        def taken_over(client: redis.Redis) -> bool:
            masters = {int(m[1]) for _, _, m, *_ in client.cluster("slots")}
            return _state_ok(client) and dead.port not in masters

        self._wait_every_live_node(taken_over, f"no replica took over from {dead.port}", timeout_s)

    def _wait_every_live_node(
        self, holds: Callable[[redis.Redis], bool], failure: str, timeout_s: float
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                if node.process is None:
                    continue
                try:
                    with redis.Redis(port=node.port) as client:
                        states.append(holds(client))
                except redis.RedisError:
                    states.append(False)
            if states and all(states):
                return
            time.sleep(0.1)
        raise RuntimeError(failure)

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


def _state_ok(client: redis.Redis) -> bool:
    return bool(client.cluster("info").get("cluster_state") == "ok")
