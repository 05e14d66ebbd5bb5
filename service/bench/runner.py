"""The bench's parent process: load the graph, drive the client processes phase by phase,
watch the servers, and assemble the results."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import sys
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]
import redis

from service import keys
from service.bench import report
from service.bench.capacity import RateSearch
from service.bench.client import ChildConfig, Message, child_main
from service.bench.deploy import Deployment, SetupError
from service.bench.graph import Graph, import_lines

PHASES = ("import", "connect", "steady", "capacity", "disconnect")
IMPORT_CHUNK = 64 * 1024
STOP_TIMEOUT_S = 15.0
QUIET_S = 1.5
MAX_QUIET_WAIT_S = 60.0
MIN_CAPACITY_RATE = 20.0
"""The capacity search halves a rate that missed down to this, then gives up."""


class BenchError(Exception):
    """The run broke off (a client process died, a phase timed out)."""


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """Every parameter of one run, as given on the command line (validated)."""

    users: int
    mean_list: float
    max_list: int
    seed: int
    prefix: str
    seconds: float
    rate: float
    celebrity_every: float
    connect_concurrency: int
    client_procs: int
    settle_seconds: float
    find_capacity: bool
    step_seconds: float
    p99_target_ms: float
    max_steps: int
    target: str | None
    nodes: int
    workers: int
    database_url: str | None

    def params(self) -> dict[str, Any]:
        out = asdict(self)
        if self.target is not None:
            out["nodes"] = out["workers"] = "n/a"
        return out


# ----- progress and server watching ---------------------------------------------------


class Monitor:
    """CPU seconds per phase and peak RSS of the server processes, and the progress line."""

    def __init__(self, servers: Sequence[tuple[str, str, int]], users: int) -> None:
        self.servers = []
        for role, name, pid in servers:
            try:
                self.servers.append((role, name, psutil.Process(pid)))
            except psutil.Error:
                continue
        self.users = users
        self.peak_rss: dict[str, int] = {name: 0 for _, name, _ in self.servers}
        self.cpu: dict[str, dict[str, float]] = {n: {} for _, n, _ in self.servers}
        self.client_cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self.other_cpu: dict[str, float] = {}
        self._own = psutil.Process()
        self._own_at = 0.0
        self._machine_at = 0.0
        self.phase = "setup"
        self._phase_started = time.monotonic()
        self._server_cpu_at: dict[str, float] = {}
        self._client_cpu_at = 0.0
        self._started = time.monotonic()
        self._last_line = 0.0
        self.stats: dict[str, int] = {}
        self.extra = ""

    def server_cpu(self, proc: Any) -> float:
        """User + system CPU seconds of a watched process (0 once it is gone)."""
        try:
            times = proc.cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    def rss(self, name: str) -> int:
        for _, n, proc in self.servers:
            if n == name:
                try:
                    return int(proc.memory_info().rss)
                except psutil.Error:
                    return 0
        return 0

    def sample(self) -> None:
        for _, name, proc in self.servers:
            try:
                rss = int(proc.memory_info().rss)
            except psutil.Error:
                continue
            self.peak_rss[name] = max(self.peak_rss[name], rss)

    def begin(self, phase: str, client_cpu: float) -> None:
        """Start charging CPU to `phase` (ends the current one)."""
        self.end(client_cpu)
        self.phase = phase
        self._phase_started = time.monotonic()
        self._server_cpu_at = {n: self.server_cpu(p) for _, n, p in self.servers}
        self._client_cpu_at = client_cpu
        self._machine_at = _machine_busy()
        self._own_at = self.server_cpu(self._own)

    def end(self, client_cpu: float) -> None:
        if self.phase not in PHASES:
            return
        mine = client_cpu - self._client_cpu_at
        for _, name, proc in self.servers:
            used = self.server_cpu(proc) - self._server_cpu_at.get(name, 0.0)
            self.cpu[name][self.phase] = self.cpu[name].get(self.phase, 0.0) + used
            mine += used
        used = client_cpu - self._client_cpu_at
        self.client_cpu[self.phase] = self.client_cpu.get(self.phase, 0.0) + used
        mine += self.server_cpu(self._own) - self._own_at
        # Whatever else ran on the machine meanwhile, so a reader can tell disturbed figures.
        other = max(0.0, _machine_busy() - self._machine_at - mine)
        self.other_cpu[self.phase] = self.other_cpu.get(self.phase, 0.0) + other
        elapsed = time.monotonic() - self._phase_started
        self.wall[self.phase] = self.wall.get(self.phase, 0.0) + elapsed
        self.phase = "between"
        self.sample()

    def tick(self, client_cpu: float = 0.0) -> None:
        """One progress line a second on stderr; samples the servers' RSS."""
        now = time.monotonic()
        if now - self._last_line < 1.0:
            return
        self._last_line = now
        self.sample()
        s = self.stats
        line = (
            f"[{now - self._started:6.1f}s] {self.phase:<9} "
            f"sessions {s.get('connected', 0):,}/{self.users:,}  "
            f"changes {s.get('sent', 0):,}  deliveries {s.get('deliveries', 0):,}"
        )
        if s.get("closed"):
            line += f"  closed {s['closed']:,}"
        if self.extra:
            line += f"  {self.extra}"
        print(line, file=sys.stderr, flush=True)


def _machine_busy() -> float:
    """CPU seconds the whole machine spent busy (every core, every process) since boot."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return float(
        sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    )


# ----- client processes ---------------------------------------------------------------


class ClientPool:
    """The spawned client processes and their pipes; replies are gathered one per process."""

    def __init__(self, configs: Sequence[ChildConfig], monitor: Monitor) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.monitor = monitor
        self.conns: list[Connection] = []
        self.procs: list[BaseProcess] = []
        self.stats: list[Message] = [{} for _ in configs]
        self.cpu = [0.0 for _ in configs]
        self.stopped = False
        for config in configs:
            parent, child = ctx.Pipe(duplex=True)
            proc = ctx.Process(
                target=child_main, args=(child, config), name=f"bench-client-{config.index}",
                daemon=True,
            )  # fmt: skip
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    @property
    def size(self) -> int:
        return len(self.conns)

    def client_cpu(self) -> float:
        return sum(self.cpu)

    def totals(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for stats in self.stats:
            for key in ("connected", "sent", "acked", "deliveries", "closed"):
                out[key] += int(stats.get(key, 0))
        return dict(out)

    def send(self, messages: Message | Sequence[Message]) -> None:
        """One message to every process, or one each (a sequence in process order)."""
        for i, conn in enumerate(self.conns):
            conn.send(messages if isinstance(messages, dict) else messages[i])

    def _receive(self, timeout_s: float) -> list[Message]:
        got = []
        for conn in wait(self.conns, timeout=timeout_s):
            if not isinstance(conn, Connection):
                continue
            try:
                message = conn.recv()
            except (EOFError, OSError) as exc:
                index = self.conns.index(conn)
                raise BenchError(
                    f"client process {index} exited (code {self.procs[index].exitcode})"
                ) from exc
            proc = int(message.get("proc", 0))
            self.cpu[proc] = float(message.get("cpu_s", self.cpu[proc]))
            if message.get("type") == "stats":
                self.stats[proc] = message
                self.monitor.stats = self.totals()
            elif message.get("type") == "error":
                raise BenchError(f"client process {proc}: {message.get('message')}")
            else:
                got.append(message)
        self.monitor.tick(self.client_cpu())
        return got

    def gather(self, kind: str, timeout_s: float) -> list[Message]:
        """The next `kind` reply of every process, in process order."""
        replies: dict[int, Message] = {}
        deadline = time.monotonic() + timeout_s
        while len(replies) < self.size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"no {kind!r} reply from every client within {timeout_s:.0f} s")
            for message in self._receive(min(0.25, remaining)):
                if message.get("type") == kind:
                    replies[int(message["proc"])] = message
        return [replies[i] for i in range(self.size)]

    def pump(self, seconds: float) -> None:
        """Keep the progress line and stats going for `seconds`."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self._receive(min(0.25, remaining))

    def until_quiet(self, min_s: float, max_s: float = MAX_QUIET_WAIT_S) -> float:
        """Wait until no delivery arrived for QUIET_S (at least `min_s`); the seconds waited."""
        started = time.monotonic()
        last = self.totals().get("deliveries", 0)
        last_change = started
        while True:
            self._receive(0.25)
            now = time.monotonic()
            current = self.totals().get("deliveries", 0)
            if current != last:
                last, last_change = current, now
            if now - started >= min_s and now - last_change >= QUIET_S:
                return now - started
            if now - started >= max_s:
                return now - started

    def stop(self) -> None:
        """Ask every process to stop; terminate those that do not. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        for conn in self.conns:
            try:
                conn.send({"cmd": "stop"})
            except (OSError, ValueError):
                continue
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for i, proc in enumerate(self.procs):
            conn = self.conns[i]
            while proc.is_alive() and time.monotonic() < deadline:
                try:
                    if conn.poll(0.1):
                        message = conn.recv()
                        self.cpu[i] = float(message.get("cpu_s", self.cpu[i]))
                except (EOFError, OSError):
                    break
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        for conn in self.conns:
            conn.close()


# ----- the run ------------------------------------------------------------------------


def _merge_samples(replies: Sequence[Message], key: str) -> array[float]:
    merged = array("d")
    for reply in replies:
        merged.frombytes(reply[key])
    return merged


class Bench:
    """One benchmark run against `url`, with or without a deployment of its own."""

    def __init__(
        self,
        config: BenchConfig,
        graph: Graph,
        url: str,
        api_key: str,
        jwt_secret: str,
        deployment: Deployment | None,
    ) -> None:
        self.config = config
        self.graph = graph
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.jwt_secret = jwt_secret
        self.deployment = deployment
        servers = []
        if deployment is not None:
            if deployment.redis is not None and deployment.redis.process is not None:
                servers.append(("redis", "redis", deployment.redis.process.pid))
            servers += [(p.role, p.name, p.pid) for p in deployment.processes]
        self.monitor = Monitor(servers, graph.users)
        self.pool: ClientPool | None = None
        self.results: report.Results = {}

    # ----- phases ---------------------------------------------------------------------

    def run(self) -> report.Results:
        """Every phase in order; the results (also left in `self.results` when it breaks off)."""
        c = self.config
        procs = c.client_procs
        configs = [
            ChildConfig(
                index=i,
                url=self.url,
                jwt_secret=self.jwt_secret,
                prefix=c.prefix,
                users=self.graph.users,
                owned=tuple(range(i, self.graph.users, procs)),
                lists={u: self.graph.buddies(u) for u in range(i, self.graph.users, procs)},
                seed=c.seed,
            )
            for i in range(procs)
        ]
        # The clients start (interpreters, tokens) while the graph loads.
        self.pool = ClientPool(configs, self.monitor)
        self.monitor.begin("import", 0.0)
        imported, import_s = self._import()
        self.pool.gather("ready", timeout_s=120)
        self.results["import"] = {
            "edges": imported,
            "seconds": round(import_s, 2),
            "edges_per_s": round(imported / import_s, 1) if import_s else None,
        }
        rss_before = {name: self.monitor.rss(name) for name in self.monitor.peak_rss}
        self.results["connect"] = self._connect_storm()
        rss_after = {name: self.monitor.rss(name) for name in self.monitor.peak_rss}
        self.results["steady"], self.results["correctness"] = self._steady()
        self.results["capacity"] = self._capacity() if c.find_capacity else None
        self.monitor.end(self.pool.client_cpu())
        self.results["disconnect"] = self._disconnect()
        self.pool.stop()
        self.results["servers"] = self._servers(rss_before, rss_after)
        self.results["client"] = self._client()
        self.results["phase_seconds"] = {k: round(v, 1) for k, v in self.monitor.wall.items()}
        self.results["other_cpu_s"] = {k: round(v, 1) for k, v in self.monitor.other_cpu.items()}
        return self.results

    def _import(self) -> tuple[int, float]:
        started = time.monotonic()
        imported = asyncio.run(self._import_async())
        return imported, time.monotonic() - started

    async def _import_async(self) -> int:
        total = self.graph.edge_count()
        sent = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal sent
            chunk: list[bytes] = []
            size = 0
            for line in import_lines(self.graph, self.config.prefix):
                chunk.append(line)
                size += len(line)
                if size >= IMPORT_CHUNK:
                    sent += len(chunk)
                    yield b"".join(chunk)
                    chunk, size = [], 0
            sent += len(chunk)
            yield b"".join(chunk)

        async def progress() -> None:
            while True:
                self.monitor.extra = f"import {sent:,}/{total:,} edges"
                self.monitor.tick()
                await asyncio.sleep(0.25)

        ticker = asyncio.create_task(progress())
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Content-Type": "application/x-ndjson",
        }
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http,
                http.post(f"{self.url}/v1/import", data=body(), headers=headers) as reply,
            ):
                payload = await reply.json(content_type=None)
                if reply.status != 200:
                    raise SetupError(f"import failed: HTTP {reply.status}: {payload}")
        except aiohttp.ClientError as exc:
            raise SetupError(f"import failed: {exc}") from exc
        finally:
            ticker.cancel()
            self.monitor.extra = ""
        rejected = payload.get("rejected") or []
        if rejected:
            codes = Counter(r.get("code") for r in rejected)
            raise SetupError(
                f"import rejected {payload.get('rejected_total', len(rejected))} lines "
                f"({dict(codes)}): is BUDDYCAST_MAX_BUDDIES below --max-list + 1?"
            )
        return int(payload.get("imported", 0))

    def _connect_storm(self) -> dict[str, Any]:
        pool = self._pool()
        c = self.config
        self.monitor.begin("connect", pool.client_cpu())
        per_proc = max(1, math.ceil(c.connect_concurrency / pool.size))
        pool.send({"cmd": "connect", "concurrency": per_proc})
        timeout = max(300.0, self.graph.users / 20)
        replies = pool.gather("connected", timeout_s=timeout)
        started = min(r["started"] for r in replies)
        done = max(r["done"] for r in replies)
        to_snapshot = _merge_samples(replies, "to_snapshot")
        nodes: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        for r in replies:
            nodes.update(r["nodes"])
            errors.update(r["errors"])
        sessions = len(to_snapshot)
        seconds = done - started
        # Every session's going online fans out to the others: let that drain, so the
        # node's memory is measured at rest and the steady phase starts clean.
        settle_s = pool.until_quiet(min_s=2.0)
        self.monitor.end(pool.client_cpu())
        return {
            "sessions": sessions,
            "failed": sum(int(r["failed"]) for r in replies),
            "seconds": round(seconds, 2),
            "sessions_per_s": round(sessions / seconds, 1) if seconds > 0 else None,
            "time_to_snapshot_ms": report.percentiles(to_snapshot, (50, 99, 100)),
            "snapshot_mismatches": sum(int(r["snapshot_mismatches"]) for r in replies),
            "client_loop_lag_max_ms": round(max(r["loop_lag_max"] for r in replies) * 1000, 1),
            "client_gc_pause_max_ms": round(max(r["gc_pause_max"] for r in replies) * 1000, 1),
            "settle_seconds": round(settle_s, 1),
            "per_node": dict(nodes),
            "errors": dict(errors),
        }

    def _send_phase(self, rate: float, seconds: float, celebrity_every: float) -> dict[str, Any]:
        """Send for `seconds`, settle, collect the window's latencies; no correctness check."""
        pool = self._pool()
        c = self.config
        start = time.time() + 0.5
        pool.send(
            {
                "cmd": "send",
                "start": start,
                "seconds": seconds,
                "rate": rate / pool.size,
                "celebrity_every": celebrity_every,
            }
        )
        sent = pool.gather("sent", timeout_s=seconds + 60)
        pool.pump(c.settle_seconds)
        pool.send({"cmd": "collect", "start": start, "end": start + seconds})
        samples = pool.gather("samples", timeout_s=120)
        latencies = _merge_samples(samples, "all")
        read = _merge_samples(samples, "read")
        celebrity = _merge_samples(samples, "celebrity")
        ordinary = _merge_samples(samples, "ordinary")
        acks = _merge_samples(samples, "ack")
        changes = sum(int(r["sent"]) for r in sent)
        errors: Counter[str] = Counter()
        for r in samples:
            errors.update(r["errors"])
        cpu = sum(float(r["phase_cpu_s"]) for r in sent)
        return {
            "seconds": seconds,
            "rate": rate,
            "changes_sent": changes,
            "rate_achieved": round(changes / seconds, 1),
            "celebrity_changes": sum(int(r["celebrity_sent"]) for r in sent),
            "acked": len(acks),
            "unacked": sum(int(r["unacked"]) for r in samples),
            "latency_ms": report.percentiles(latencies, (50, 95, 99, 100)),
            "read_latency_ms": report.percentiles(read, (50, 95, 99, 100)),
            "celebrity_latency_ms": report.percentiles(celebrity, (50, 99, 100)),
            "ordinary_latency_ms": report.percentiles(ordinary, (50, 99, 100)),
            "ack_latency_ms": report.percentiles(acks, (50, 99, 100)),
            "deliveries": len(latencies),
            "celebrity_deliveries": len(celebrity),
            "deliveries_per_s": round(len(latencies) / seconds, 1),
            "client_cpu_s": round(cpu, 2),
            "client_loop_lag_max_ms": round(max(r["loop_lag_max"] for r in samples) * 1000, 1),
            "client_gc_pause_max_ms": round(max(r["gc_pause_max"] for r in samples) * 1000, 1),
            "errors": dict(errors),
        }

    def _verify(self) -> dict[str, Any]:
        """Every open session against the last acked version of every subject in its list."""
        pool = self._pool()
        pool.send({"cmd": "acked"})
        expected: dict[int, int] = {}
        for reply in pool.gather("acked", timeout_s=60):
            expected.update(reply["versions"])
        pool.send({"cmd": "check", "expected": expected})
        checks = pool.gather("check", timeout_s=120)
        examples: list[str] = []
        for r in checks:
            examples += r["examples"]
        return {
            "missing": sum(int(r["missing"]) for r in checks),
            "checked": sum(int(r["checked"]) for r in checks),
            "subjects_changed": len(expected),
            "regressions": sum(int(r["regressions"]) for r in checks),
            "foreign": sum(int(r["foreign"]) for r in checks),
            "sessions_closed": sum(int(r["closed"]) for r in checks),
            "examples": examples[:10],
        }

    def _checked(self) -> dict[str, Any]:
        """`_verify` after the settle; if something is missing, again once deliveries stop."""
        first = self._verify()
        first["missing_at_settle"] = first["missing"]
        if first["missing"] == 0:
            return first
        # Late is not lost: wait for the system to go quiet, then count again.
        self._pool().until_quiet(min_s=QUIET_S)
        final = self._verify()
        final["missing_at_settle"] = first["missing"]
        return final

    def _steady(self) -> tuple[dict[str, Any], dict[str, Any]]:
        pool = self._pool()
        self.monitor.begin("steady", pool.client_cpu())
        c = self.config
        steady = self._send_phase(c.rate, c.seconds, c.celebrity_every)
        correctness = self._checked()
        self.monitor.end(pool.client_cpu())
        steady["client_cores"] = round(steady["client_cpu_s"] / c.seconds, 2)
        return steady, correctness

    def _capacity(self) -> dict[str, Any]:
        """The rate search with the steady phase's mix; then, if that has celebrity changes,
        again without them: the celebrity's burst does not grow with the rate, and where it
        alone passes the p99 target the first search cannot tell how far the rate goes."""
        pool = self._pool()
        c = self.config
        self.monitor.begin("capacity", pool.client_cpu())
        result = self._capacity_search(c.celebrity_every)
        result["without_celebrity"] = self._capacity_search(0.0) if c.celebrity_every > 0 else None
        self.monitor.extra = ""
        # The steps may leave a backlog: correctness is judged once it has drained.
        pool.until_quiet(min_s=c.settle_seconds)
        final = self._verify()
        self.monitor.end(pool.client_cpu())
        result["final_missing"] = final["missing"]
        result["final_checked"] = final["checked"]
        return result

    def _capacity_search(self, celebrity_every: float) -> dict[str, Any]:
        pool = self._pool()
        c = self.config
        steps: list[dict[str, Any]] = []
        search = RateSearch(c.rate, MIN_CAPACITY_RATE)
        # The per-user limit is 5/s; round-robin keeps each user at rate/users a second.
        ceiling = 4.0 * max(1, self.graph.users - 1)
        for _ in range(c.max_steps):
            rate = search.rate
            if rate > ceiling:
                search.stopped = f"rate above {ceiling:g}/s would trip the per-user rate limit"
                break
            self.monitor.extra = f"capacity step {rate:,.0f}/s" + (
                "" if celebrity_every else ", no celebrity changes"
            )
            phase = self._send_phase(rate, c.step_seconds, celebrity_every)
            check = self._verify()
            p99 = phase["latency_ms"]["p99"]
            sent_enough = phase["rate_achieved"] >= 0.9 * rate
            ok = p99 is not None and p99 <= c.p99_target_ms and check["missing"] == 0
            ok = ok and sent_enough
            steps.append(
                {
                    "rate": round(rate, 1),
                    "achieved": phase["rate_achieved"],
                    "p50_ms": phase["latency_ms"]["p50"],
                    "p99_ms": p99,
                    "max_ms": phase["latency_ms"]["max"],
                    "celebrity_p99_ms": phase["celebrity_latency_ms"]["p99"],
                    "ordinary_p99_ms": phase["ordinary_latency_ms"]["p99"],
                    "deliveries_per_s": phase["deliveries_per_s"],
                    "missing": check["missing"],
                    "client_cores": round(phase["client_cpu_s"] / c.step_seconds, 2),
                    "held": ok,
                }
            )
            if not sent_enough:
                why = "the load generator could not send at this rate"
            elif check["missing"]:
                why = "missing deliveries at the end of the step"
            else:
                why = f"p99 above {c.p99_target_ms:g} ms"
            if search.record(ok, why) is None:
                break
            if not ok:
                pool.until_quiet(min_s=1.0)  # a missed step may leave a backlog
        pool.until_quiet(min_s=1.0)
        return {
            "celebrity_every": celebrity_every,
            "steps": steps,
            "max_rate_held": search.held,
            "stopped_because": search.stopped,
        }

    def _disconnect(self) -> dict[str, Any] | None:
        """Every client process exits at once, and each node loses its sessions together,
        as in a network cut: the time until the nodes have deregistered them all. Only for
        a deployment the bench started (it reads the nodes' session lists in Redis)."""
        deployment = self.deployment
        if deployment is None or deployment.redis is None:
            return None
        pool = self._pool()
        lists = [keys.node_sessions(p.node_id) for p in deployment.processes if p.role == "node"]
        client = redis.Redis.from_url(deployment.redis.url, socket_timeout=5)
        try:
            registered = left = sum(client.scard(k) for k in lists)
            self.monitor.begin("disconnect", pool.client_cpu())
            started = time.monotonic()
            pool.stop()
            while left and time.monotonic() - started < MAX_QUIET_WAIT_S:
                time.sleep(0.02)
                left = sum(client.scard(k) for k in lists)
                self.monitor.tick()
            seconds = time.monotonic() - started
            self.monitor.end(pool.client_cpu())
        finally:
            client.close()
        return {"sessions": registered, "seconds": round(seconds, 2), "left": left}

    # ----- results --------------------------------------------------------------------

    def _servers(
        self, rss_before: dict[str, int], rss_after: dict[str, int]
    ) -> list[dict[str, Any]] | str:
        if self.deployment is None:
            return "n/a"
        per_node = self.results.get("connect", {}).get("per_node", {})
        node_ids = {p.name: p.node_id for p in self.deployment.processes}
        out = []
        for role, name, proc in self.monitor.servers:
            cpu = {k: round(v, 2) for k, v in self.monitor.cpu.get(name, {}).items()}
            cpu["total"] = round(self.monitor.server_cpu(proc), 2)
            entry: dict[str, Any] = {
                "role": role,
                "name": name,
                "pid": proc.pid,
                "cpu_s": cpu,
                "peak_rss_mib": round(self.monitor.peak_rss.get(name, 0) / 2**20, 1),
                "rss_before_connect_mib": round(rss_before.get(name, 0) / 2**20, 1),
                "rss_after_connect_mib": round(rss_after.get(name, 0) / 2**20, 1),
                "sessions": None,
                "rss_per_session_kib": None,
            }
            if role == "node":
                sessions = int(per_node.get(node_ids.get(name, ""), 0))
                entry["sessions"] = sessions
                if sessions:
                    grown = rss_after.get(name, 0) - rss_before.get(name, 0)
                    entry["rss_per_session_kib"] = round(grown / sessions / 1024, 2)
            out.append(entry)
        return out

    def _client(self) -> dict[str, Any]:
        pool = self._pool()
        steady = self.results.get("steady", {})
        return {
            "procs": pool.size,
            "cpu_s": {k: round(v, 2) for k, v in self.monitor.client_cpu.items()},
            "cpu_s_total": round(pool.client_cpu(), 2),
            "steady_cores": steady.get("client_cores"),
        }

    def _pool(self) -> ClientPool:
        if self.pool is None:
            raise BenchError("the client processes are not running")
        return self.pool

    def close(self) -> None:
        """Stop the client processes if they still run (after an error or Ctrl-C)."""
        if self.pool is not None:
            self.pool.stop()
