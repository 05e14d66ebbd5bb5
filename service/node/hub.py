"""The node's runtime: local sessions, who watches whom here, and delivery from the inbox.

The node keeps the latest item of every subject its sessions watch. Every item it
accepts is newer than the one it had, and it goes to every local watcher at once, so
each session sees a subject's versions only increase. Snapshots come from that cache;
subjects new to the node are read from Redis after their interest is registered, so no
change can fall between the two.

Items are ordered by (life, version): a user deleted and created again starts a new
life at version 0. A session that holds an ended life of a subject gets none of the new
one's items: the subject leaves its list, as the deletion removed it from every list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import uuid
from collections.abc import Coroutine, Iterable
from typing import Any

import orjson
from aiohttp import WSCloseCode

from service import keys, metrics
from service.config import Settings
from service.domain import Status, unseen_item
from service.events import InboxBatch, ListChange
from service.node.interest import InterestRegistry
from service.node.session import NOTHING_HELD, CachedItem, Session
from service.presence import PresenceStore, now_ms
from service.protocol import encode_item, list_frame, snapshot_frame
from service.redis_conn import REDIS_DOWN
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)

INBOX_BLOCK_MS = 2000
INBOX_COUNT = 100
SPREAD_CHUNK = 512
"""Watchers reached in one loop pass when a subject has more: a celebrity's change (10,000
socket writes a node) must not hold up every other item, ack and ping behind it."""
CLOSE_NODE_RESTARTING = 1012
CLOSE_TRY_AGAIN_LATER = 1013
DEREGISTER_ATTEMPTS = 8

Watchers = list[Session] | dict[Session, None]


class Hub:
    def __init__(self, settings: Settings, store: PresenceStore, blocking_redis: Any) -> None:
        self.settings = settings
        self.node = settings.node_id
        self.store = store
        self.redis = store.redis
        self.blocking_redis = blocking_redis
        self.sessions: dict[str, Session] = {}
        self.own: dict[str, list[Session]] = {}  # a user's sessions here: mostly one
        # Watchers of each subject: a list while they fit in one spread chunk (a list of
        # 25 sessions, a subject's mean on a node of the standard benchmark, takes a
        # quarter of a dict's memory and a seventh of a set's), dict keys beyond, where the
        # spread asks whether a session still watches. A session watches a subject exactly
        # while the subject is in its `buddies`, so a list never holds one twice.
        self.watchers: dict[str, Watchers] = {}
        self.latest: dict[str, CachedItem] = {}
        # Subjects being spread over several loop passes, and which session has which of
        # their items (a snapshot or list frame may carry one before the spread gets there).
        self._spreads: dict[str, dict[Session, CachedItem]] = {}
        self.interest = InterestRegistry(self.redis, self.node, store.keys, store.scripts)
        self.epoch: str | None = None
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        # Loops also check this: a cancellation lost inside a library must not keep
        # them running.
        self._stopping = False
        self._inbox_id = "0-0"

    # ----- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self._heartbeat_once()
        self.interest.start()
        for name, coro in (
            ("inbox", self._inbox_loop()),
            ("heartbeat", self._heartbeat_loop()),
            ("liveness", self._liveness_loop()),
        ):
            self._tasks.append(asyncio.create_task(coro, name=f"hub-{name}"))

    async def stop(self) -> None:
        """Close every session with 1012, hand presence over with the grace, deregister."""
        if self.draining:
            return
        self.draining = True
        sessions = list(self.sessions.values())
        await asyncio.gather(
            *(self._close_ws(s, CLOSE_NODE_RESTARTING, b"node restarting") for s in sessions),
            return_exceptions=True,
        )
        await asyncio.gather(*(self.close(s) for s in sessions), return_exceptions=True)
        self._stopping = True
        await cancel_and_wait([*self._tasks, *self._background])
        await self.interest.stop()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for subject in list(self.watchers):
                    pipe.srem(self.store.keys(subject).interest, self.node)
                pipe.zrem(keys.NODES, self.node)
                pipe.delete(
                    keys.node_inbox(self.node),
                    keys.node_sessions(self.node),
                    keys.node_interest(self.node),
                )
                await pipe.execute()
        except REDIS_DOWN as exc:
            log.warning("could not deregister node %s: %s (the reaper will)", self.node, exc)

    # ----- sessions --------------------------------------------------------------------

    def new_session_id(self) -> str:
        return os.urandom(8).hex()

    async def open(self, session: Session, hello: bytes) -> None:
        """Index a session registered in Redis, load its list, and send `hello` and the
        snapshot."""
        started = time.perf_counter()
        self.sessions[session.id] = session
        self.own.setdefault(session.user, []).append(session)
        metrics.SESSIONS_OPEN.inc()
        metrics.CONNECTS.inc()
        buddies = await self.store.load_list(session.user)
        if session.closed:
            return
        session.buddies = tuple(sorted(buddies))
        await self._watch(session, session.buddies)
        if session.closed:
            return
        session.start(hello, self._snapshot(session))
        metrics.SNAPSHOT_LATENCY.observe(time.perf_counter() - started)
        session.loading = False
        backlog, session.list_backlog = session.list_backlog, []
        for change in backlog:
            await self.apply_list_change(session, change)

    async def close(self, session: Session) -> None:
        """Forget the session; its user's last session schedules offline after the grace."""
        if self.sessions.pop(session.id, None) is None:
            if session.closed:
                # Closed already: the node's stop closes every session, then each
                # session's handler ends and closes it again.
                return
            # Registered in Redis before the upgrade, never indexed here.
            session.closed = True
            await self._deregister(session)
            return
        metrics.SESSIONS_OPEN.dec()
        session.closed = True
        await session.stop_writer()
        mine = self.own.get(session.user)
        if mine is not None:
            with contextlib.suppress(ValueError):
                mine.remove(session)
            if not mine:
                del self.own[session.user]
        self._unwatch(session, session.buddies)
        await self._deregister(session)

    async def _deregister(self, session: Session) -> None:
        delay = 0.05
        for attempt in range(DEREGISTER_ATTEMPTS):
            try:
                await self.store.close_session(
                    session.user, session.id, self.node, self.settings.offline_grace_s
                )
                return
            except REDIS_DOWN as exc:
                if attempt == DEREGISTER_ATTEMPTS - 1:
                    # Left registered: the user stays visible until this node is reaped.
                    log.error("could not deregister a session: %r", exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def resync(self, session: Session) -> None:
        async with session.list_lock:
            await self._watch(session, [])
            session.pending.clear()
            if not session.push_control(self._snapshot(session)):
                await self.close_slow(session)

    def _snapshot(self, session: Session) -> bytes:
        return snapshot_frame(self._items(session, session.buddies))

    def _items(self, session: Session, subjects: Iterable[str]) -> list[bytes]:
        """The latest item of each subject, encoded, for a frame queued to `session`."""
        parts: list[bytes] = []
        spreading = self._spreads
        for subject in subjects:
            cached = self.latest.get(subject)
            if cached is None:
                parts.append(orjson.dumps(unseen_item(subject)))
                continue
            parts.append(cached.data)
            given = spreading.get(subject) if spreading else None
            if given is not None:
                given[session] = cached
        return parts

    async def _watch(
        self, session: Session, subjects: Iterable[str], *, fresh: bool = False
    ) -> None:
        """Watch `subjects`; read those the node has no item of (`fresh`: all of them)."""
        subjects = list(subjects)
        new = []
        for subject in subjects:
            if self._add_watcher(subject, session):
                new.append(subject)
        if new:
            await self.interest.add(new)
        need = [s for s in session.buddies if s not in self.latest and s in self.watchers]
        if fresh:
            # The cached item may be of a life that ended: a list frame must carry the
            # subject's current one.
            need = list(dict.fromkeys([*need, *subjects]))
        if need:
            self._offer_statuses(need, await self.store.read_statuses(need))

    def _offer_statuses(self, subjects: list[str], statuses: dict[str, Status]) -> None:
        for subject in subjects:
            status = statuses.get(subject)
            if status is None:
                self.offer(unseen_item(subject), 0)
            else:
                self.offer(status.watcher_item(), status.life)

    def _unwatch(self, session: Session, subjects: Iterable[str]) -> None:
        """Forget `session` as a watcher of `subjects`; drop the interest of those it was the
        last local watcher of. One loop, no call a subject: a closing session leaves 50 of
        them on average, and 10,000 sessions may close together."""
        watchers, latest = self.watchers, self.latest
        dropped = []
        for subject in subjects:
            watching = watchers.get(subject)
            if watching is None:
                continue
            if isinstance(watching, dict):
                watching.pop(session, None)
            else:
                # Not contextlib.suppress: its context manager tripled this loop's cost.
                try:  # noqa: SIM105
                    watching.remove(session)
                except ValueError:
                    pass
            if not watching:
                del watchers[subject]
                latest.pop(subject, None)
                dropped.append(subject)
        if dropped:
            self.interest.remove(dropped)

    def _add_watcher(self, subject: str, session: Session) -> bool:
        """Index `session` as a watcher of `subject`; True if the node had none."""
        watching = self.watchers.get(subject)
        if watching is None:
            self.watchers[subject] = [session]
            return True
        if isinstance(watching, dict):
            watching[session] = None
        elif len(watching) < SPREAD_CHUNK:
            watching.append(session)
        else:
            self.watchers[subject] = dict.fromkeys([*watching, session])
        return False

    # ----- delivery --------------------------------------------------------------------

    def offer(self, item: dict[str, Any], life: int) -> None:
        """Accept an item if it is newer than the node's, and queue it to every local watcher."""
        subject = item["user"]
        watching = self.watchers.get(subject)
        if not watching:
            return
        cached = self.latest.get(subject)
        if cached is not None:
            if (life, item["version"]) <= (cached.life, cached.version):
                return
            if life > cached.life:
                self._end_life(subject, watching)
                watching = self.watchers.get(subject)
                if not watching:
                    return
        cached = CachedItem(item, encode_item(item), life)
        self.latest[subject] = cached
        if subject in self._spreads:
            return  # the running spread sees the newer item and goes round again
        if len(watching) > SPREAD_CHUNK:
            self._spreads[subject] = {}
            self._spawn(self._spread(subject))
            return
        written = 0
        for session in watching:
            written += session.push_status(subject, cached)
        self._delivered(cached, written)

    async def _spread(self, subject: str) -> None:
        """Push `subject`'s latest item to its watchers a chunk per loop pass; start over
        with a newer item when one comes, skipping sessions that have it already."""
        given = self._spreads[subject]
        try:
            while True:
                cached = self.latest.get(subject)
                watching = self.watchers.get(subject)
                if cached is None or not watching:
                    return
                sessions = list(watching)
                written = 0
                for start in range(0, len(sessions), SPREAD_CHUNK):
                    if start:
                        await asyncio.sleep(0)
                        watching = self.watchers.get(subject)
                        if self.latest.get(subject) is not cached or not watching:
                            break
                    for session in sessions[start : start + SPREAD_CHUNK]:
                        # Removed from the list meanwhile, or given it by a snapshot or a
                        # list frame: a repeated version is not allowed.
                        if session in watching and given.get(session) is not cached:
                            given[session] = cached
                            written += session.push_status(subject, cached)
                self._delivered(cached, written)
                if self.latest.get(subject) is cached:
                    return
        finally:
            del self._spreads[subject]

    def _settle(self, session: Session, subject: str) -> None:
        """Push now what a running spread still owes a watching `session` of `subject`, as
        the fan-out of a small subject would have: a frame about to change the session's
        view of it must not overtake the item."""
        given = self._spreads.get(subject)
        cached = self.latest.get(subject)
        if given is None or cached is None or given.get(session) is cached:
            return
        if session in self.watchers.get(subject, ()):
            given[session] = cached
            self._delivered(cached, session.push_status(subject, cached))

    @staticmethod
    def _delivered(cached: CachedItem, written: int) -> None:
        if written:
            metrics.DELIVERIES.inc(written)
            metrics.PROPAGATION.observe(max(0.0, time.time() - cached.updated_at / 1000))

    def _end_life(self, subject: str, watching: Watchers) -> None:
        """The subject was deleted and its id is in use again: take it out of the lists of
        the sessions that hold its ended life."""
        # Their own removal (every edge to a deleted user goes) may still be on its way; a
        # list that adds the id again does so after it, and gets the new life.
        ended = [s for s in watching if subject not in s.held]
        frame = list_frame([], [subject])
        for session in ended:
            session.buddies = tuple(b for b in session.buddies if b != subject)
            if not session.push_control(frame):
                self._spawn(self.close_slow(session))
            self._unwatch(session, [subject])

    def deliver(self, batch: InboxBatch) -> None:
        for life, item in batch.items:
            self.offer(item, life)
        for change in batch.lists:
            for session in list(self.own.get(change.owner, ())):
                if session.loading:
                    session.list_backlog.append(change)
                else:
                    self._spawn(self._apply_locked(session, change))
        for user in batch.deleted:
            for session in list(self.own.get(user, ())):
                self._spawn(self._close_ws(session, 1000, b"user deleted"))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _apply_locked(self, session: Session, change: ListChange) -> None:
        try:
            await self.apply_list_change(session, change)
        except REDIS_DOWN as exc:
            log.warning("list change not applied to a session; closing it: %s", exc)
            await self._close_ws(session, CLOSE_TRY_AGAIN_LATER, b"try again")

    async def apply_list_change(self, session: Session, change: ListChange) -> None:
        """Apply a list edit to one session and send it a `list` frame if anything changed."""
        async with session.list_lock:
            if session.closed:
                return
            buddies = set(session.buddies)
            added = [sys.intern(s) for s in dict.fromkeys(change.added) if s not in buddies]
            removed = [s for s in dict.fromkeys(change.removed) if s in buddies]
            if not added and not removed:
                return
            for subject in removed:
                gone = change.gone.get(subject)
                if gone is not None:
                    life, item = gone
                    self.offer(item, life)
                # The item in flight (a deleted user's `offline`) precedes the list frame.
                self._settle(session, subject)
            # Those offers may have ended a life and taken its subject out: read it again.
            buddies = set(session.buddies).difference(removed)
            buddies.update(added)
            session.buddies = tuple(sorted(buddies))
            self._unwatch(session, removed)
            # Until the list frame is queued, items of the added subjects are not pushed:
            # the frame carries their latest item, and nothing may come before it.
            session.held = session.held.union(added)
            try:
                await self._watch(session, added, fresh=True)
            finally:
                session.held = session.held.difference(added) or NOTHING_HELD
            if session.closed:
                return
            if not session.push_control(list_frame(self._items(session, added), removed)):
                await self.close_slow(session)

    async def _inbox_loop(self) -> None:
        inbox = keys.node_inbox(self.node)
        backoff = 0.1
        read_since_trim = 0
        while not self._stopping:
            try:
                response = await self.blocking_redis.xread(
                    {inbox: self._inbox_id}, count=INBOX_COUNT, block=INBOX_BLOCK_MS
                )
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("inbox read failed: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for _stream, entries in response or ():
                for entry_id, fields in entries:
                    self._inbox_id = entry_id
                    read_since_trim += 1
                    sent_ms = int(entry_id.split("-", 1)[0])
                    metrics.INBOX_LAG.observe(max(0.0, (now_ms() - sent_ms) / 1000))
                    try:
                        batch = InboxBatch.decode(fields["b"])
                    except (KeyError, ValueError, TypeError) as exc:
                        log.error("malformed inbox entry %s dropped: %s", entry_id, exc)
                        continue
                    self.deliver(batch)
            if read_since_trim >= 1000:
                read_since_trim = 0
                with contextlib.suppress(*REDIS_DOWN):
                    await self.redis.xtrim(inbox, minid=self._inbox_id)

    # ----- liveness --------------------------------------------------------------------

    async def _heartbeat_once(self) -> None:
        added = await self.redis.zadd(keys.NODES, {self.node: now_ms()})
        epoch = await self.redis.get(keys.EPOCH)
        if epoch is None:
            await self.redis.set(keys.EPOCH, uuid.uuid4().hex, nx=True)
            epoch = await self.redis.get(keys.EPOCH)
        if self.epoch is None:
            self.epoch = epoch
        elif epoch != self.epoch:
            log.warning("Redis lost its data (epoch changed): registering sessions again")
            self.epoch = epoch
            await self._reregister()
        elif added:
            # Reaped while Redis was out of reach for longer than the node TTL.
            log.warning("this node was reaped as dead: registering sessions again")
            await self._reregister()

    async def _reregister(self) -> None:
        self._inbox_id = "0-0"
        self.latest.clear()
        await self.interest.reregister(list(self.watchers))
        for session in list(self.sessions.values()):
            await self.store.open_session(session.user, session.id, self.node)
        subjects = list(self.watchers)
        for start in range(0, len(subjects), 500):
            chunk = subjects[start : start + 500]
            self._offer_statuses(chunk, await self.store.read_statuses(chunk))

    async def _heartbeat_loop(self) -> None:
        interval = max(0.2, min(1.0, self.settings.node_ttl_s / 4))
        while not self._stopping:
            await asyncio.sleep(interval)
            try:
                await self._heartbeat_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    async def _liveness_loop(self) -> None:
        """Ping every session each heartbeat; close those stuck on a send, or silent for two.

        One pass over the sessions replaces a timer and a task per session and ping.
        """
        heartbeat = self.settings.heartbeat_s
        while not self._stopping:
            await asyncio.sleep(min(1.0, heartbeat / 4))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if session.stalled_for(now) > self.settings.slow_client_s:
                    await self.close_slow(session)
                elif now - session.heard_at > 2 * heartbeat:
                    metrics.SILENT_CLIENT_CLOSES.inc()
                    self._spawn(self._close_ws(session, 1001, b"no answer to pings"))
                elif now - session.pinged_at >= heartbeat:
                    session.ping(now)

    async def close_slow(self, session: Session) -> None:
        metrics.SLOW_CLIENT_CLOSES.inc()
        await self._close_ws(session, CLOSE_TRY_AGAIN_LATER, b"too slow: reconnect")

    async def _close_ws(self, session: Session, code: int, message: bytes) -> None:
        """Close the socket, and abort it when the client does not let the close through."""
        await session.stop_writer()
        try:
            await asyncio.wait_for(session.ws.close(code=code, message=message), timeout=2.0)
        except (TimeoutError, ConnectionError, RuntimeError):
            transport = session.ws._req.transport if session.ws._req is not None else None
            if transport is not None:
                transport.abort()


__all__ = ["CLOSE_NODE_RESTARTING", "CLOSE_TRY_AGAIN_LATER", "Hub", "WSCloseCode"]
