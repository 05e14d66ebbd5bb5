"""`buddycast bench`: options, the run from start to report, and the exit code.

Exit codes: 0 when the run completed (targets met or not), 1 when correctness failed
(a missing delivery, a version out of order, an item outside a watcher's list), 2 when
the run could not be set up or broke off.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

from service.bench import floor, report
from service.bench.client import raise_nofile_limit
from service.bench.deploy import Deployment, SetupError, redis_version
from service.bench.graph import generate, user_name
from service.bench.runner import Bench, BenchConfig, BenchError
from service.config import Settings
from service.domain import USER_ID_RE

EXIT_OK = 0
EXIT_INCORRECT = 1
EXIT_SETUP = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `buddycast bench`."""
    graph = parser.add_argument_group("graph")
    graph.add_argument(
        "--users",
        type=int,
        default=20_000,
        help="sessions, one per user, the celebrity included (default 20000)",
    )
    graph.add_argument("--mean-list", type=float, default=50.0, help="mean list size (default 50)")
    graph.add_argument("--max-list", type=int, default=1000, help="largest list (default 1000)")
    graph.add_argument("--seed", type=int, default=1, help="graph and sender order (default 1)")
    graph.add_argument("--prefix", default="bench-", help="user id prefix (default bench-)")

    load = parser.add_argument_group("load")
    load.add_argument(
        "--seconds", type=float, default=30.0, help="steady phase length (default 30)"
    )
    load.add_argument(
        "--rate", type=float, default=200.0, help="status changes a second (default 200)"
    )
    load.add_argument(
        "--celebrity-every",
        type=float,
        default=5.0,
        help="seconds between celebrity changes; 0: none (default 5)",
    )
    load.add_argument(
        "--connect-concurrency", type=int, default=200, help="connects in flight (default 200)"
    )
    load.add_argument(
        "--client-procs",
        type=int,
        default=os.cpu_count() or 1,
        help="load generator processes (default: CPU count)",
    )
    load.add_argument(
        "--settle-seconds",
        type=float,
        default=3.0,
        help="wait after sending before checking (default 3)",
    )
    load.add_argument(
        "--find-capacity",
        action="store_true",
        help="after the steady phase, raise the rate 1.5x a step until p99 passes "
        "--p99-target-ms (halve it while no step has held), then halve the gap between "
        "the best rate held and the lowest missed until it is within 10%%; with celebrity "
        "changes, search again without them",
    )
    load.add_argument(
        "--step-seconds", type=float, default=10.0, help="capacity step length (default 10)"
    )
    load.add_argument(
        "--p99-target-ms", type=float, default=100.0, help="capacity p99 limit (default 100)"
    )
    load.add_argument(
        "--max-steps", type=int, default=12, help="capacity steps at most (default 12)"
    )

    where = parser.add_argument_group("deployment")
    where.add_argument(
        "--target",
        metavar="URL",
        help="drive a running deployment (http://host:port) instead of starting one",
    )
    where.add_argument("--api-key", help="its API key (default: BUDDYCAST_API_KEY)")
    where.add_argument("--jwt-secret", help="its JWT secret (default: BUDDYCAST_JWT_SECRET)")
    where.add_argument(
        "--nodes", type=int, default=2, help="nodes to start, on one port (default 2)"
    )
    where.add_argument("--workers", type=int, default=1, help="workers to start (default 1)")
    where.add_argument(
        "--database-url",
        help="database of the started deployment (default: SQLite in the work folder)",
    )
    where.add_argument(
        "--keep-workdir", action="store_true", help="keep the work folder (logs, database)"
    )

    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", type=Path, help="write the results as JSON")
    out.add_argument(
        "--write-docs",
        metavar="FILE",
        type=Path,
        help="rewrite this markdown file (docs/benchmarks.md) with the results",
    )


def _config(args: argparse.Namespace) -> BenchConfig:
    """Validate the options; raise SetupError naming the first bad one."""
    checks = [
        (args.users >= 3, "--users must be at least 3"),
        (args.max_list >= 2, "--max-list must be at least 2"),
        (
            1 <= args.mean_list < args.max_list,
            "--mean-list must be at least 1 and below --max-list",
        ),
        (args.seconds > 0, "--seconds must be positive"),
        (args.rate > 0, "--rate must be positive"),
        (args.celebrity_every >= 0, "--celebrity-every must be 0 or more"),
        (args.connect_concurrency >= 1, "--connect-concurrency must be at least 1"),
        (1 <= args.client_procs <= args.users, "--client-procs must be between 1 and --users"),
        (args.settle_seconds >= 0, "--settle-seconds must be 0 or more"),
        (args.step_seconds > 0, "--step-seconds must be positive"),
        (args.p99_target_ms > 0, "--p99-target-ms must be positive"),
        (args.max_steps >= 1, "--max-steps must be at least 1"),
        (args.nodes >= 1, "--nodes must be at least 1"),
        (args.workers >= 1, "--workers must be at least 1"),
        # Round-robin senders: each user changes rate/users times a second, under 5/s.
        (args.rate <= 4 * (args.users - 1), "--rate must stay below 4 changes/s per user"),
    ]
    for ok, message in checks:
        if not ok:
            raise SetupError(message)
    for probe in (user_name(args.prefix, 0), user_name(args.prefix, args.users - 1)):
        if USER_ID_RE.fullmatch(probe) is None:
            raise SetupError(f"--prefix {args.prefix!r} makes invalid user ids such as {probe!r}")
    target = args.target.rstrip("/") if args.target else None
    if target is not None and not target.startswith(("http://", "https://")):
        raise SetupError("--target must be an http:// or https:// URL")
    return BenchConfig(
        users=args.users,
        mean_list=args.mean_list,
        max_list=args.max_list,
        seed=args.seed,
        prefix=args.prefix,
        seconds=args.seconds,
        rate=args.rate,
        celebrity_every=args.celebrity_every,
        connect_concurrency=args.connect_concurrency,
        client_procs=args.client_procs,
        settle_seconds=args.settle_seconds,
        find_capacity=args.find_capacity,
        step_seconds=args.step_seconds,
        p99_target_ms=args.p99_target_ms,
        max_steps=args.max_steps,
        target=target,
        nodes=args.nodes,
        workers=args.workers,
        database_url=args.database_url,
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _check_target(url: str) -> None:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as reply:
            if reply.status == 200:
                return
    except OSError as exc:
        raise SetupError(f"--target {url} is not ready: {exc}") from exc
    raise SetupError(f"--target {url} is not ready")


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the benchmark; print the table, write JSON and docs; return the exit code."""
    try:
        config = _config(args)
    except SetupError as exc:
        _say(str(exc))
        return EXIT_SETUP
    raise_nofile_limit()  # the nodes inherit it too
    previous = signal.signal(signal.SIGTERM, _interrupt)
    workdir: Path | None = None
    deployment: Deployment | None = None
    bench: Bench | None = None
    started_at = report.now_iso()
    keep = bool(args.keep_workdir)
    code = EXIT_SETUP
    results: report.Results = {}
    try:
        started = time.monotonic()
        graph = generate(config.users, config.mean_list, config.max_list, config.seed)
        sizes = graph.list_sizes()
        _say(
            f"graph of {graph.users:,} users, {graph.edge_count():,} edges "
            f"(mean list {sum(sizes) / len(sizes):.1f}, max {max(sizes)}) "
            f"in {time.monotonic() - started:.1f} s"
        )
        # Measured while nothing else of the run is up.
        costs = floor.measure()
        _say(_costs_line(costs))
        if config.target is None:
            workdir = Path(tempfile.mkdtemp(prefix="buddycast-bench-"))
            _say(f"starting redis, {config.nodes} node(s), {config.workers} worker(s) in {workdir}")
            deployment = Deployment(
                workdir,
                nodes=config.nodes,
                workers=config.workers,
                # Every list is friends plus the celebrity; one spare place so the import
                # never meets the cap.
                max_buddies=config.max_list + 1,
                database_url=config.database_url,
            )
            # Assigned before it starts, so a half-started deployment is stopped too.
            deployment.start()
            url, api_key, jwt_secret = deployment.url, deployment.api_key, deployment.jwt_secret
            redis = deployment.redis_version()
        else:
            url = config.target
            api_key = args.api_key or settings.api_key or ""
            jwt_secret = args.jwt_secret or settings.jwt_secret or ""
            if not api_key or not jwt_secret:
                raise SetupError("--target needs --api-key and --jwt-secret (or BUDDYCAST_*)")
            _check_target(url)
            redis = redis_version(settings.redis_url) if settings.redis_url else "n/a"
        bench = Bench(config, graph, url, api_key, jwt_secret, deployment)
        results = bench.run()
        results.update(
            {
                "started_at": started_at,
                "command": shlex.join(["buddycast", *sys.argv[1:]]),
                "machine": {**report.machine_info(redis), **costs},
                "params": config.params(),
                "graph": {
                    "users": graph.users,
                    "edges": graph.edge_count(),
                    "mean_list": round(sum(sizes) / len(sizes), 2),
                    "max_list": max(sizes),
                    "celebrity": user_name(config.prefix, 0),
                },
                "workdir": str(workdir) if keep and workdir else None,
            }
        )
        results["celebrity_floor"] = report.celebrity_floor(results)
        results["targets"] = report.targets(results)
        code = EXIT_INCORRECT if _incorrect(results) else EXIT_OK
        results["exit_code"] = code
    except SetupError as exc:
        _say(f"setup failed: {exc}")
        keep = True
    except BenchError as exc:
        _say(f"run broke off: {exc}")
        keep = True
    except KeyboardInterrupt:
        _say("interrupted")
    except Exception:
        # A bug or an unforeseen failure: the run did not complete, which is exit 2, not
        # the correctness failure that exit 1 reports.
        _say("failed:\n" + traceback.format_exc())
        keep = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        if bench is not None:
            bench.close()
        if deployment is not None:
            stopping = time.monotonic()
            deployment.stop()
            _say(f"deployment stopped in {time.monotonic() - stopping:.1f} s")
        if workdir is not None and keep:
            _say(f"logs and data kept in {workdir}")
        elif workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    if code == EXIT_SETUP:
        return code
    print(report.render(results))
    if args.json is not None:
        report.write_json(args.json, results)
        _say(f"results written to {args.json}")
    if args.write_docs is not None:
        report.write_docs(args.write_docs, results)
        _say(f"{args.write_docs} rewritten")
    if code == EXIT_INCORRECT:
        _say("correctness FAILED: " + "; ".join(_incorrect(results)))
    return code


def _costs_line(costs: dict[str, Any]) -> str:
    loopback = costs["loopback"]
    sockets = (
        f"a loopback frame written in {loopback['write_us']:.1f} µs, read in "
        f"{loopback['read_us']:.1f} µs"
        if loopback is not None
        else f"loopback not measured ({costs['loopback_error']})"
    )
    return f"this machine: {sockets}; Python reference {costs['python_reference_ms']:.1f} ms"


def _incorrect(results: dict[str, Any]) -> list[str]:
    """What broke the delivery guarantees, if anything."""
    c = results["correctness"]
    problems = []
    if c["missing"]:
        problems.append(f"{c['missing']} missing deliveries ({'; '.join(c['examples'][:3])})")
    if c["regressions"]:
        problems.append(f"{c['regressions']} versions repeated or out of order")
    if c["foreign"]:
        problems.append(f"{c['foreign']} items about users outside the watcher's list")
    capacity = results.get("capacity")
    if capacity and capacity["final_missing"]:
        problems.append(f"{capacity['final_missing']} missing after the capacity steps")
    return problems
