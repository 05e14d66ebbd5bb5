"""A load-generator process: one asyncio loop holding a slice of the sessions.

The parent sends commands over a pipe (connect, send, collect, acked, check, stop) and
gets one reply per command, plus a `stats` message twice a second for the progress line.
Sessions are sockets of `wsclient`: each frame is timestamped when its bytes arrive, and
frames are decoded in one pass over the sessions that got data.

Each change carries its send time in its status text (`MARK` + seconds since the epoch);
a watcher's latency is its receipt time minus that. All processes share the machine's
clock, so the two `time.time()` readings are comparable.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import resource
import signal
import threading
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress
from multiprocessing.connection import Connection
from typing import Any

import orjson

from service.auth import mint_token
from service.bench import wsclient
from service.bench.graph import CELEBRITY, user_name
from service.bench.wsclient import WsConnection

MARK = "bench:"
_MARK_LEN = len(MARK)
STATS_EVERY_S = 0.5
CONNECT_ATTEMPTS = 5
SNAPSHOT_TIMEOUT_S = 60.0
TOKEN_TTL_S = 24 * 3600
SEND_TICK_S = 0.002
LAG_PROBE_S = 0.05
DECODE_SESSIONS_PER_PASS = 200

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChildConfig:
    """What one client process needs: its users, their lists, where and how to connect."""

    index: int
    url: str
    jwt_secret: str
    prefix: str
    users: int
    owned: tuple[int, ...]
    lists: dict[int, tuple[int, ...]]
    seed: int


@dataclass(slots=True)
class BenchSession:
    """One WebSocket session and what its watcher saw: subject → last version."""

    user: int
    ws: WsConnection | None = None
    node: str = ""
    seen: dict[int, int] = field(default_factory=dict)
    closed: bool = False
    close_code: int | None = None


def raise_nofile_limit() -> None:
    """Raise the soft limit of open files to the hard one: each session is a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class GcWatch:
    """The longest pause of the cyclic garbage collector, to tell it from other stalls."""

    def __init__(self) -> None:
        self.started = 0.0
        self.pause_max = 0.0
        self.pauses = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        elif self.started:
            self.pause_max = max(self.pause_max, time.perf_counter() - self.started)
            self.pauses += 1

    def take(self) -> float:
        """The longest pause since the last call."""
        pause, self.pause_max = self.pause_max, 0.0
        return pause


GC = GcWatch()


def child_main(conn: Connection, config: ChildConfig) -> None:
    """Entry point of a spawned client process."""
    # Ctrl-C reaches the whole process group; the parent decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_nofile_limit()
    gc.callbacks.append(GC)
    client = Client(conn, config)
    try:
        import uvloop

        uvloop.run(client.run())
    except ImportError:
        asyncio.run(client.run())


class Client:
    """The sessions of one process, the commands that drive them, and what they measured."""

    def __init__(self, conn: Connection, config: ChildConfig) -> None:
        self.conn = conn
        self.config = config
        self.names = [user_name(config.prefix, u) for u in range(config.users)]
        self.index = {name: u for u, name in enumerate(self.names)}
        self.sessions: dict[int, BenchSession] = {}
        self.commands: asyncio.Queue[Message | None] = asyncio.Queue()
        self.stopping = False
        self.tokens: dict[int, str] = {}
        self.sources = wsclient.loopback_sources(config.url)
        # Counters for the progress line and the report.
        self.connected = 0
        self.closed = 0
        self.sent = 0
        self.acked = 0
        self.deliveries = 0
        self.regressions = 0
        self.foreign = 0
        self.errors: Counter[str] = Counter()
        # Per delivery of a marked change: its send time and latency (seconds), to its
        # arrival at the watcher's socket; `read_latency` to the generator's read of it.
        self.sample_sent = array("d")
        self.sample_latency = array("d")
        self.read_latency = array("d")
        self.celeb_sent = array("d")
        self.celeb_latency = array("d")
        self.ordinary_sent = array("d")
        self.ordinary_latency = array("d")
        self.ack_sent = array("d")
        self.ack_latency = array("d")
        self.pending: dict[str, tuple[int, float]] = {}
        self.acked_version: dict[int, int] = {}
        self._ref = 0
        self.loop_lag_max = 0.0
        self._current: asyncio.Task[Message] | None = None
        # Sessions that received frames since the last decoding pass.
        self._arrived: dict[int, WsConnection] = {}
        self._decode_scheduled = False
        rng = random.Random(config.seed * 1000 + config.index)
        senders = [u for u in config.owned if u != CELEBRITY]
        rng.shuffle(senders)
        self.senders = senders
        self._next_sender = 0

    # ----- plumbing -------------------------------------------------------------------

    def send(self, message: Message) -> None:
        message.setdefault("cpu_s", cpu_seconds())
        message["proc"] = self.config.index
        self.conn.send(message)

    def _read_commands(self, loop: asyncio.AbstractEventLoop) -> None:
        # A thread blocks on the pipe: `add_reader` would make its socket non-blocking,
        # and then a large reply could not be written in one go.
        while True:
            try:
                message: Message | None = self.conn.recv()
            except (EOFError, OSError):
                message = None  # the parent is gone
            if message is None or message.get("cmd") == "stop":
                # Stop now, even in the middle of a phase (Ctrl-C, an error in the parent).
                loop.call_soon_threadsafe(self._stop_now)
                return
            loop.call_soon_threadsafe(self.commands.put_nowait, message)

    def _stop_now(self) -> None:
        self.stopping = True
        if self._current is not None:
            self._current.cancel()
        self.commands.put_nowait(None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=self._read_commands, args=(loop,), name="commands", daemon=True
        ).start()
        self.tokens = {
            u: mint_token(self.names[u], self.config.jwt_secret, TOKEN_TTL_S)
            for u in self.config.owned
        }
        stats = asyncio.create_task(self._stats_loop())
        lag = asyncio.create_task(self._lag_loop())
        self.send({"type": "ready"})
        try:
            while True:
                command = await self.commands.get()
                if command is None or self.stopping:
                    break
                self._current = asyncio.create_task(self._dispatch(command))
                try:
                    reply = await self._current
                except asyncio.CancelledError:
                    if self.stopping:
                        break
                    raise
                finally:
                    self._current = None
                self.send(reply)
        finally:
            self.stopping = True
            stats.cancel()
            lag.cancel()
            await asyncio.gather(stats, lag, return_exceptions=True)
            await self._close_all()
        with contextlib.suppress(OSError):
            self.send({"type": "stopped"})

    async def _dispatch(self, command: Message) -> Message:
        name = command["cmd"]
        if name == "connect":
            return await self.connect_all(int(command["concurrency"]))
        if name == "send":
            return await self.send_changes(
                float(command["start"]),
                float(command["seconds"]),
                float(command["rate"]),
                float(command["celebrity_every"]),
            )
        if name == "collect":
            return self.collect(float(command["start"]), float(command["end"]))
        if name == "acked":
            return {"type": "acked", "versions": self.acked_version}
        if name == "check":
            return self.check(command["expected"])
        return {"type": "error", "message": f"unknown command {name!r}"}

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            self.send(self.stats())

    async def _lag_loop(self) -> None:
        # How late a short sleep wakes up: if this grows, latencies include the
        # generator's own delay, and the figures say so.
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_PROBE_S)
            lag = time.monotonic() - before - LAG_PROBE_S
            self.loop_lag_max = max(self.loop_lag_max, lag)

    def stats(self) -> Message:
        return {
            "type": "stats",
            "connected": self.connected,
            "sent": self.sent,
            "acked": self.acked,
            "deliveries": self.deliveries,
            "closed": self.closed,
        }

    async def _close_all(self) -> None:
        # Aborting the sockets is enough: the deployment is stopped next, and 20,000
        # close handshakes would only slow the exit.
        for session in self.sessions.values():
            if session.ws is not None:
                session.ws.abort()

    # ----- connect storm --------------------------------------------------------------

    async def connect_all(self, concurrency: int) -> Message:
        """Open every owned session, at most `concurrency` at once; each waits for its snapshot."""
        gate = asyncio.Semaphore(max(1, concurrency))
        # The celebrity first, so that every later snapshot can list them online.
        order = sorted(self.config.owned, key=lambda u: u != CELEBRITY)
        started = time.time()
        self.loop_lag_max = 0.0
        GC.take()
        # Every session adds long-lived objects, and each full collection scans them all:
        # measured, that stalled this loop for over a second mid-storm. Collect once when
        # the sessions are open and freeze the survivors, so later passes skip them.
        gc.disable()
        try:
            results = await asyncio.gather(*(self._open(u, gate) for u in order))
        finally:
            done = time.time()
            gc_pause = GC.take()  # before collections can run again
            gc.enable()
        to_snapshot = array("d", (r for r in results if r is not None))
        nodes = Counter(s.node for s in self.sessions.values() if not s.closed)
        mismatched = sum(
            1
            for s in self.sessions.values()
            if not s.closed and set(s.seen) != set(self.config.lists[s.user])
        )
        reply: Message = {
            "type": "connected",
            "started": started,
            "done": done,
            "to_snapshot": to_snapshot.tobytes(),
            "loop_lag_max": self.loop_lag_max,
            "gc_pause_max": gc_pause,
            "failed": sum(1 for r in results if r is None),
            "nodes": dict(nodes),
            "snapshot_mismatches": mismatched,
            "errors": dict(self.errors),
        }
        gc.collect()
        gc.freeze()
        return reply

    async def _open(self, user: int, gate: asyncio.Semaphore) -> float | None:
        url = f"{self.config.url}/v1/ws?token={self.tokens[user]}"
        async with gate:
            first = time.time()
            for attempt in range(CONNECT_ATTEMPTS):
                if attempt:
                    await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                session = await self._try_open(user, url)
                if session is not None:
                    self.sessions[user] = session
                    self.connected += 1
                    return time.time() - first
            return None

    def _source(self, user: int) -> str | None:
        return self.sources[user % len(self.sources)] if self.sources else None

    async def _try_open(self, user: int, url: str) -> BenchSession | None:
        try:
            ws = await wsclient.connect(url, self._arrive, SNAPSHOT_TIMEOUT_S, self._source(user))
        except wsclient.HandshakeError as exc:
            self.errors[f"connect_http_{exc.status}"] += 1
            return None
        except (OSError, TimeoutError) as exc:
            self.errors[f"connect_{type(exc).__name__}"] += 1
            return None
        ws.tag = user
        session = BenchSession(user, ws)
        try:
            async with asyncio.timeout(SNAPSHOT_TIMEOUT_S):
                await ws.wait_frames(2)
        except TimeoutError:
            self.errors["snapshot_timeout"] += 1
            ws.abort()
            return None
        except ConnectionError:
            self.errors[f"closed_before_snapshot_{ws.close_code}"] += 1
            return None
        (_, _, hello), (_, _, snapshot) = ws.frames[:2]
        del ws.frames[:2]
        for expected, data in (("hello", hello), ("snapshot", snapshot)):
            frame = orjson.loads(data)
            if frame.get("type") != expected:
                self.errors[f"unexpected_{frame.get('type')}_before_{expected}"] += 1
                ws.abort()
                return None
            if expected == "hello":
                session.node = str(frame.get("node", ""))
            else:
                self._snapshot(session, frame["items"])
        ws.live = True
        if ws.frames or ws.closed:
            self._arrive(ws)
        return session

    def _snapshot(self, session: BenchSession, items: Sequence[dict[str, Any]]) -> None:
        seen: dict[int, int] = {}
        for item in items:
            subject = self.index.get(item["user"])
            if subject is None:
                self.foreign += 1
                continue
            seen[subject] = int(item["version"])
        session.seen = seen

    # ----- receiving ------------------------------------------------------------------

    def _arrive(self, ws: WsConnection) -> None:
        """A live session got data: decode it with the others' in one pass, soon."""
        self._arrived[ws.tag] = ws
        if not self._decode_scheduled:
            self._decode_scheduled = True
            asyncio.get_running_loop().call_soon(self._decode_arrived)

    def _decode_arrived(self) -> None:
        # A few hundred sessions a pass: sockets that become readable meanwhile get their
        # arrival time read between passes, not after the whole burst is decoded.
        self._decode_scheduled = False
        for _ in range(min(DECODE_SESSIONS_PER_PASS, len(self._arrived))):
            user, ws = self._arrived.popitem()
            session = self.sessions.get(user)
            if session is None:
                continue
            frames, ws.frames = ws.frames, []
            for received, read, data in frames:
                self._on_frame(session, data, received, read)
            if ws.closed and not session.closed:
                session.closed = True
                session.close_code = ws.close_code
                self.closed += 1
                if not self.stopping:
                    self.errors[f"session_closed_{ws.close_code}"] += 1
        if self._arrived and not self._decode_scheduled:
            self._decode_scheduled = True
            asyncio.get_running_loop().call_soon(self._decode_arrived)

    def _on_frame(self, session: BenchSession, data: bytes, received: float, read: float) -> None:
        frame = orjson.loads(data)
        kind = frame.get("type")
        if kind == "status":
            seen = session.seen
            for item in frame["items"]:
                subject = self.index.get(item["user"])
                if subject is None or subject not in seen:
                    # Privacy: a session must only hear of users in its own list.
                    self.foreign += 1
                    continue
                version = item["version"]
                if version <= seen[subject]:
                    self.regressions += 1
                else:
                    seen[subject] = version
                self.deliveries += 1
                status_text = item["text"]
                if status_text.startswith(MARK):
                    sent = float(status_text[_MARK_LEN:])
                    if subject == CELEBRITY:
                        self.celeb_sent.append(sent)
                        self.celeb_latency.append(received - sent)
                    else:
                        self.ordinary_sent.append(sent)
                        self.ordinary_latency.append(received - sent)
                    self.sample_sent.append(sent)
                    self.sample_latency.append(received - sent)
                    self.read_latency.append(read - sent)
        elif kind == "ack":
            pending = self.pending.pop(frame.get("ref") or "", None)
            if pending is not None:
                subject, sent = pending
                version = int(frame["item"]["version"])
                if version > self.acked_version.get(subject, 0):
                    self.acked_version[subject] = version
                self.acked += 1
                self.ack_sent.append(sent)
                self.ack_latency.append(received - sent)
        elif kind == "error":
            self.pending.pop(frame.get("ref") or "", None)
            self.errors[f"error_{frame.get('code')}"] += 1
        else:
            self.errors[f"unexpected_{kind}"] += 1

    # ----- sending --------------------------------------------------------------------

    def _next_user(self) -> BenchSession | None:
        # Round-robin over a shuffled order: a user sends again only after every other
        # user of this process has, which keeps each well under 5 changes a second.
        for _ in range(len(self.senders)):
            user = self.senders[self._next_sender]
            self._next_sender = (self._next_sender + 1) % len(self.senders)
            session = self.sessions.get(user)
            if session is not None and not session.closed:
                return session
        return None

    async def _change(self, session: BenchSession) -> bool:
        ws = session.ws
        if ws is None:
            return False
        self._ref += 1
        ref = f"{self.config.index}.{self._ref}"
        sent = time.time()
        self.pending[ref] = (session.user, sent)
        try:
            ws.send_text(f'{{"op":"set_status","ref":"{ref}","text":"{MARK}{sent:.6f}"}}'.encode())
        except ConnectionError:
            self.pending.pop(ref, None)
            self.errors["send_failed"] += 1
            return False
        self.sent += 1
        return True

    async def send_changes(
        self, start: float, seconds: float, rate: float, celebrity_every: float
    ) -> Message:
        """Send `rate` changes a second from [start, start + seconds), plus the celebrity's."""
        await asyncio.sleep(max(0.0, start - time.time()))
        end = start + seconds
        sent = celebrity_sent = 0
        celebrity = self.sessions.get(CELEBRITY)
        next_celebrity = start + celebrity_every / 2 if celebrity_every > 0 else float("inf")
        cpu_before = cpu_seconds()
        self.loop_lag_max = 0.0
        GC.take()
        while True:
            now = time.time()
            if now >= end:
                break
            due = int((now - start) * rate) + 1
            while sent < due:
                session = self._next_user()
                if session is None:
                    break
                await self._change(session)
                sent += 1
            if celebrity is not None and not celebrity.closed and now >= next_celebrity:
                await self._change(celebrity)
                celebrity_sent += 1
                next_celebrity += celebrity_every
            await asyncio.sleep(SEND_TICK_S)
        return {
            "type": "sent",
            "sent": sent,
            "celebrity_sent": celebrity_sent,
            "ended": time.time(),
            "phase_cpu_s": cpu_seconds() - cpu_before,
        }

    # ----- results --------------------------------------------------------------------

    def collect(self, start: float, end: float) -> Message:
        """Latencies of changes sent in [start, end); forget everything sent before `end`."""
        out: Message = {"type": "samples", "errors": dict(self.errors)}
        for sent, named in (
            (self.sample_sent, (("all", self.sample_latency), ("read", self.read_latency))),
            (self.celeb_sent, (("celebrity", self.celeb_latency),)),
            (self.ordinary_sent, (("ordinary", self.ordinary_latency),)),
            (self.ack_sent, (("ack", self.ack_latency),)),
        ):
            inside = [start <= s < end for s in sent]
            later = [s >= end for s in sent]
            for name, latency in named:
                out[name] = array("d", compress(latency, inside)).tobytes()
                latency[:] = array("d", compress(latency, later))
            sent[:] = array("d", compress(sent, later))
        out["unacked"] = sum(1 for _, s in self.pending.values() if start <= s < end)
        out["loop_lag_max"] = self.loop_lag_max
        out["gc_pause_max"] = GC.take()
        self.loop_lag_max = 0.0
        out["regressions"] = self.regressions
        out["foreign"] = self.foreign
        return out

    def check(self, expected: dict[int, int]) -> Message:
        """Per open session and subject in its list: did it see the last acked version?"""
        missing = checked = 0
        examples: list[str] = []
        closed = 0
        for session in self.sessions.values():
            if session.closed:
                closed += 1
                continue
            seen = session.seen
            for subject in self.config.lists[session.user]:
                want = expected.get(subject)
                if want is None:
                    continue
                checked += 1
                got = seen.get(subject, -1)
                if got < want:
                    missing += 1
                    if len(examples) < 5:
                        examples.append(
                            f"{self.names[session.user]} saw {self.names[subject]} "
                            f"v{got}, acked v{want}"
                        )
        return {
            "type": "check",
            "missing": missing,
            "checked": checked,
            "closed": closed,
            "examples": examples,
            "regressions": self.regressions,
            "foreign": self.foreign,
        }
