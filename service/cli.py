"""`buddycast run | node | worker | migrate | token`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import signal
import sys
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from service import gc_policy, logs, metrics
from service.auth import mint_token
from service.config import Settings, SettingsError
from service.embedded_redis import RedisProcess
from service.errors import BuddycastError

log = logging.getLogger("buddycast")
DOTENV = Path(".env")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="buddycast", description="Presence for buddy lists.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="everything in one process on the embedded defaults")
    commands.add_parser("node", help="a WebSocket + HTTP node")
    commands.add_parser("worker", help="fan-out, persistence and reaper")
    commands.add_parser("migrate", help="database migrations to head")
    token = commands.add_parser("token", help="print a client token for USER")
    token.add_argument("user")
    token.add_argument("--ttl", type=int, default=3600, help="seconds (default 3600)")
    from service.bench import cli as bench_cli

    bench_cli.add_arguments(commands.add_parser("bench", help="load generator and benchmark"))
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_level, settings.log_format)
        if args.command == "token":
            settings.require("jwt_secret")
            print(mint_token(args.user, settings.jwt_secret or "", args.ttl))
        elif args.command == "migrate":
            _run(_migrate(settings))
        elif args.command == "node":
            metrics.watch_gc()
            gc_policy.install()
            _run(_serve_node(settings, with_worker=False))
        elif args.command == "worker":
            metrics.watch_gc()
            gc_policy.install()
            _run(_serve_worker(settings))
        elif args.command == "run":
            metrics.watch_gc()
            gc_policy.install()
            _run(_serve_all(settings))
        elif args.command == "bench":
            sys.exit(bench_cli.run(args, settings))
    except (SettingsError, BuddycastError) as exc:
        print(f"buddycast: {exc}", file=sys.stderr)
        sys.exit(2)


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


async def _migrate(settings: Settings) -> None:
    from service.storage import migrate

    await migrate(settings.database_url)
    log.info("database migrated to head")


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _log_tasks)
    await stop.wait()
    log.info("stopping")


def _log_tasks() -> None:
    """SIGUSR1: log the stack of every asyncio task, to see what a stuck process awaits."""
    for task in asyncio.all_tasks():
        chain: list[str] = []
        awaiting: Any = task.get_coro()
        while awaiting is not None and len(chain) < 30:
            frame = getattr(awaiting, "cr_frame", None) or getattr(awaiting, "ag_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:"
                             f"{frame.f_code.co_name}:{frame.f_lineno}")  # fmt: skip
            awaiting = getattr(awaiting, "cr_await", None) or getattr(awaiting, "ag_await", None)
        log.warning("task %s: %s", task.get_name(), " -> ".join(chain) or "(no frames)")


async def _serve(app: web.Application, host: str, port: int, reuse_port: bool) -> None:
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=10)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        await site.start()
        await _until_signalled()
    finally:
        await runner.cleanup()


async def _serve_node(settings: Settings, with_worker: bool) -> None:
    from service.node.app import create_app

    settings.require("redis_url", "jwt_secret", "api_key")
    app = create_app(settings, with_worker=with_worker)
    log.info("node %s listening on %s:%d", settings.node_id, settings.host, settings.port)
    await _serve(app, settings.host, settings.port, settings.reuse_port)


async def _serve_worker(settings: Settings) -> None:
    from service.node.app import create_worker_app

    settings.require("redis_url")
    app = create_worker_app(settings)
    log.info("worker %s; metrics on %s:%d", settings.node_id, settings.host, settings.metrics_port)
    await _serve(app, settings.host, settings.metrics_port, False)


def ensure_dev_secrets(settings: Settings, dotenv: Path = DOTENV) -> Settings:
    """Create the JWT secret and API key in `.env` on first run when they are missing."""
    additions = {}
    if not settings.jwt_secret:
        additions["BUDDYCAST_JWT_SECRET"] = secrets.token_urlsafe(32)
    if not settings.api_key:
        additions["BUDDYCAST_API_KEY"] = secrets.token_urlsafe(32)
    if not additions:
        return settings
    existing = dotenv.read_text() if dotenv.exists() else ""
    lines = [existing.rstrip("\n")] if existing.strip() else []
    lines += [f"{k}={v}" for k, v in additions.items()]
    dotenv.write_text("\n".join(lines) + "\n")
    dotenv.chmod(0o600)
    log.info("wrote new dev secrets to %s", dotenv)
    return replace(
        settings,
        jwt_secret=settings.jwt_secret or additions["BUDDYCAST_JWT_SECRET"],
        api_key=settings.api_key or additions["BUDDYCAST_API_KEY"],
    )


async def _serve_all(settings: Settings) -> None:
    settings = ensure_dev_secrets(settings)
    redis_process = None
    if not settings.redis_url:
        redis_process = RedisProcess().start()
        settings = replace(settings, redis_url=redis_process.url)
        log.info("started a private redis-server on port %d", redis_process.port)
    try:
        await _migrate(settings)
        print(_banner(settings), flush=True)
        await _serve_node(settings, with_worker=True)
    finally:
        if redis_process is not None:
            redis_process.cleanup()


def _banner(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in {"0.0.0.0", "::"} else settings.host
    base = f"http://{host}:{settings.port}"
    return (
        f"buddycast is running at {base}  (WebSocket: ws://{host}:{settings.port}/v1/ws)\n"
        f"  API key:      {settings.api_key}\n"
        f"  client token: .venv/bin/buddycast token USER   (or: make token USER=alice)\n"
        f"  ready check:  curl {base}/readyz"
    )


if __name__ == "__main__":
    main()
