"""Presence operations on one user's Redis slot, with SQL behind it as the source of truth.

Shared by the node (sessions, `set_status`), the HTTP API and the worker (reaper). Every
write is one Lua script in the user's slot; SQL is read only when Redis has no copy.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any

import orjson

from service import keys, metrics
from service.bulk import BulkReader
from service.config import Settings
from service.domain import Presence, Status, StatusPatch, unseen_item
from service.errors import RateLimited, Unavailable
from service.events import status_from_hash
from service.keys import UserKeys
from service.scripts import Scripts
from service.storage import Database

log = logging.getLogger(__name__)

RATE_PER_S = 5
RATE_BURST = 10
LIST_COPY_TTL_MS = 24 * 3600 * 1000
ENDED_TTL_MS = 24 * 3600 * 1000
_MAX_HYDRATE_ATTEMPTS = 3


_T_SET_STATUS = metrics.redis_timer("set_status")
_T_SESSION_OPEN = metrics.redis_timer("session_open")
_T_SESSION_CLOSE = metrics.redis_timer("session_close")
_T_READ_EACH = metrics.redis_timer("read_each")
_T_LIST_CHANGE = metrics.redis_timer("list_change")
_T_LOAD_LIST = metrics.redis_timer("load_list")
_T_SQL_STATUSES = metrics.sql_timer("get_statuses")
_T_SQL_LIST = metrics.sql_timer("get_list")


_SessionCall = tuple[str, str, str, int]
"""A session script to run for a session: user, session id, node, and one number."""
_Opening = _SessionCall
"""A session to open: user, session id, node, the user's session cap (0: none)."""
_Closing = _SessionCall
"""A session to close: user, session id, node, milliseconds of grace before `offline`."""


def now_ms() -> int:
    return int(time.time() * 1000)


def _node_lists(sessions: Iterable[_SessionCall]) -> dict[str, list[str]]:
    """The members ("session user") each node's session list gains or loses."""
    listed: dict[str, list[str]] = {}
    for user, session, node, _ in sessions:
        listed.setdefault(node, []).append(f"{session} {user}")
    return listed


def _codes(
    sessions: Sequence[_SessionCall], codes: Sequence[Any], listing: dict[str, Any]
) -> dict[_SessionCall, int | Exception]:
    """Each session's script code, or its error, or the error of its node's list command."""
    found: dict[_SessionCall, int | Exception] = {}
    for call, code in zip(sessions, codes, strict=True):
        failed = listing[call[2]]
        found[call] = failed if isinstance(failed, Exception) else code
    return found


class PresenceStore:
    """One user's status, sessions and list in Redis; hydrated from SQL on demand."""

    def __init__(self, redis: Any, db: Database, settings: Settings) -> None:
        self.redis = redis
        self.db = db
        self.settings = settings
        self.scripts = Scripts(redis)
        self._keys = lru_cache(maxsize=65536)(self._make_keys)
        # Sessions opening together (a storm, a node's restart) share SQL reads.
        self._sql_lists: BulkReader[str, list[str]] = BulkReader(
            self._lists_from_sql, [], max_keys=200
        )
        self._sql_statuses: BulkReader[str, Status | None] = BulkReader(self._get_statuses, None)
        # ... and Redis round trips: the opens and list reads asked for while one is out
        # go together in the next pipeline.
        # A command that fails for one user (a key of the wrong type, say) fails that
        # user's read only: the pipelines give its error as the user's value.
        self._opens: BulkReader[_Opening, int] = BulkReader(self._open_sessions, -1)
        # Sessions that end together (a network cut, a node's stop) close in one pipeline.
        self._closes: BulkReader[_Closing, int] = BulkReader(self._close_sessions, 0)
        self._redis_lists: BulkReader[str, list[str]] = BulkReader(self._lists_from_redis, [])
        self._redis_statuses: BulkReader[str, Status | None] = BulkReader(
            self._statuses_from_redis, None
        )

    async def _open_sessions(self, openings: list[_Opening]) -> dict[_Opening, int | Exception]:
        """Run `session_open.lua` for each opening; its code (0 opened, 1 not hydrated, 2
        at the cap). The node lists each session first: if the node dies right after, the
        reaper closes it (closing a session never opened does nothing)."""
        at = now_ms()
        listed = _node_lists(openings)
        async with self.redis.pipeline(transaction=False) as pipe:
            for node, members in listed.items():
                pipe.sadd(keys.node_sessions(node), *members)
            for user, session, node, max_sessions in openings:
                k = self.keys(user)
                await self.scripts.session_open(
                    keys=[k.status, k.sessions, k.due, k.events],
                    args=[user, session, node, at, self.settings.stream_maxlen, max_sessions],
                    client=pipe,
                )
            results = await pipe.execute(raise_on_error=False)
        listing = dict(zip(listed, results[: len(listed)], strict=True))
        return _codes(openings, results[len(listed) :], listing)

    async def _close_sessions(self, closings: list[_Closing]) -> dict[_Closing, int | Exception]:
        """Run `session_close.lua` for each closing, then take the sessions off their nodes'
        lists; each closing's code (1: `offline` scheduled). Both steps may run again: a
        session closed twice changes nothing."""
        at = now_ms()
        listed = _node_lists(closings)
        async with self.redis.pipeline(transaction=False) as pipe:
            for user, session, _, grace_ms in closings:
                k = self.keys(user)
                await self.scripts.session_close(
                    keys=[k.status, k.sessions, k.due],
                    args=[user, session, at + grace_ms],
                    client=pipe,
                )
            for node, members in listed.items():
                pipe.srem(keys.node_sessions(node), *members)
            results = await pipe.execute(raise_on_error=False)
        unlisting = dict(zip(listed, results[len(closings) :], strict=True))
        return _codes(closings, results[: len(closings)], unlisting)

    async def _lists_from_redis(self, owners: list[str]) -> dict[str, list[str] | Exception]:
        return await self.read_each("SMEMBERS", owners, lambda k: k.list)

    async def _statuses_from_redis(self, users: list[str]) -> dict[str, Status | Exception | None]:
        found = await self.read_each("HGETALL", users, lambda k: k.status)
        statuses: dict[str, Status | Exception | None] = {}
        for user, row in found.items():
            if isinstance(row, Exception):
                statuses[user] = row
            else:
                fields = iter(row)
                statuses[user] = status_from_hash(user, dict(zip(fields, fields, strict=True)))
        return statuses

    async def read_each(
        self, command: str, users: Sequence[str], key: Callable[[UserKeys], str]
    ) -> dict[str, Any]:
        """`command` (HGETALL, HVALS, SMEMBERS or GET) on one key of each user, by `read_each.lua`:
        one call per shard, all in one pipeline. Each user's reply, or the error of its
        shard's call."""
        if not users:
            return {}
        groups = keys.by_shard(users, self.keys)
        async with self.redis.pipeline(transaction=False) as pipe:
            for group in groups:
                group_keys = [key(self.keys(user)) for user in group]
                await self.scripts.read_each(keys=group_keys, args=[command], client=pipe)
            with _T_READ_EACH.time():
                replies = await pipe.execute(raise_on_error=False)
        found: dict[str, Any] = {}
        for group, rows in zip(groups, replies, strict=True):
            if isinstance(rows, Exception):
                found.update(dict.fromkeys(group, rows))
            else:
                found.update(zip(group, rows, strict=True))
        return found

    async def _lists_from_sql(self, owners: list[str]) -> dict[str, list[str]]:
        """Lists read from SQL, their Redis copies stored in one round trip for all, a
        script call per shard (a cluster pipeline refuses MGET, so versions come the same
        way).

        `load_list.lua` stores a copy only if the list's version is still the one read
        before the SQL read: an edit that raced the read leaves no stale copy.
        """
        seen = await self.read_each("GET", owners, lambda k: k.list_version)
        for version in seen.values():
            if isinstance(version, Exception):
                raise version
        lists = await self.db.get_lists(owners)
        async with self.redis.pipeline(transaction=False) as pipe:
            for group in keys.by_shard(owners, self.keys):
                copies: list[str] = []
                args: list[Any] = [LIST_COPY_TTL_MS]
                for owner in group:
                    k = self.keys(owner)
                    copies += [k.list, k.list_version]
                    args += [seen[owner] or "", " ".join(lists[owner])]
                await self.scripts.load_list(keys=copies, args=args, client=pipe)
            await pipe.execute()
        return lists

    async def _get_statuses(self, users: list[str]) -> dict[str, Status | None]:
        return dict(await self.db.get_statuses(users))

    def _make_keys(self, user: str) -> UserKeys:
        return keys.UserKeys(user, self.settings.shards)

    def keys(self, user: str) -> UserKeys:
        return self._keys(user)

    async def hydrate(self, users: Sequence[str]) -> None:
        """Copy the SQL statuses of `users` into Redis where Redis has none."""
        with _T_SQL_STATUSES.time():
            stored = await self._sql_statuses.get_many(users)
        async with self.redis.pipeline(transaction=False) as pipe:
            for user, s in zip(users, stored, strict=True):
                k = self.keys(user)
                args: list[Any] = ["0"]
                if s is not None:
                    args = ["1", s.presence.value, s.text, s.avatar or "", s.version]
                    args += [s.updated_at, s.life]
                await self.scripts.hydrate(
                    keys=[k.status, k.sessions, k.ended], args=args, client=pipe
                )
            await pipe.execute()

    async def commit_status(
        self,
        user: str,
        patch: StatusPatch,
        *,
        limited: bool,
        request_id: str | None = None,
        session: tuple[str, str] | None = None,
    ) -> Status:
        """Apply `patch` in one script (rate-limited for WebSocket clients); return the result.

        `session` (id, node) is the WebSocket session asking: when Redis has lost the
        user's status, that session is registered again first, so the user stays visible.
        """
        k = self.keys(user)
        args = [
            user,
            0,
            request_id or uuid.uuid4().hex,
            RATE_PER_S if limited else 0,
            RATE_BURST,
            self.settings.stream_maxlen,
            "1" if patch.presence is not None else "0",
            patch.presence.value if patch.presence is not None else "",
            "1" if patch.text is not None else "0",
            patch.text or "",
            "1" if patch.set_avatar else "0",
            patch.avatar or "",
        ]
        for _ in range(_MAX_HYDRATE_ATTEMPTS):
            args[1] = now_ms()
            with _T_SET_STATUS.time():
                result = await self.scripts.set_status(keys=[k.status, k.events, k.rate], args=args)
            code = int(result[0])
            if code == 1:
                if session is not None:
                    await self.open_session(user, *session)
                else:
                    await self.hydrate([user])
                continue
            if code == 2:
                raise RateLimited(f"at most {RATE_PER_S} status changes per second")
            _, presence, text, avatar, version, updated_at, on = result
            return Status(
                user=user,
                presence=Presence(presence),
                text=text or "",
                avatar=avatar or None,
                version=int(version),
                updated_at=int(updated_at),
                visible=on == "1",
            )
        raise Unavailable("status could not be loaded")

    async def open_session(self, user: str, session: str, node: str, max_sessions: int = 0) -> bool:
        """Register a session of `user` on `node`; False when the user is at `max_sessions`.

        The user's first session makes them visible to watchers.
        """
        for _ in range(_MAX_HYDRATE_ATTEMPTS):
            with _T_SESSION_OPEN.time():
                code = await self._opens.get((user, session, node, max_sessions))
            if code == 0:
                return True
            if code == 2:
                await self.redis.srem(keys.node_sessions(node), f"{session} {user}")
                return False
            await self.hydrate([user])
        raise Unavailable("status could not be loaded")

    async def close_session(self, user: str, session: str, node: str, grace_s: float) -> None:
        """Deregister a session; the last one schedules `offline` after `grace_s`."""
        with _T_SESSION_CLOSE.time():
            await self._closes.get((user, session, node, int(grace_s * 1000)))

    async def offline_due(self, shard: int, limit: int = 500) -> int:
        """Turn offline the shard's users whose grace ran out; return how many went offline."""
        now = now_ms()
        due = await self.redis.zrangebyscore(keys.due_offline(shard), "-inf", now, 0, limit)
        if not due:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for user in due:
                k = self.keys(user)
                await self.scripts.offline_due(
                    keys=[k.status, k.sessions, k.due, k.events],
                    args=[user, now, self.settings.stream_maxlen],
                    client=pipe,
                )
            results = await pipe.execute()
        return sum(int(r) for r in results)

    async def load_list(self, owner: str) -> set[str]:
        """The owner's buddies: the Redis copy, or SQL (then cached) when there is none.

        Ids are interned: a node holds each buddy id once, not once per list it is in.
        """
        with _T_LOAD_LIST.time():
            members = await self._redis_lists.get(owner)
        if keys.LIST_LOADED in members:
            # Not changed in place: owners opening at once share the list read.
            return {sys.intern(m) for m in members if m != keys.LIST_LOADED}
        with _T_SQL_LIST.time():
            buddies = await self._sql_lists.get(owner)
        return set(map(sys.intern, buddies))

    async def change_list(
        self,
        owner: str,
        added: Iterable[str] = (),
        removed: Iterable[str] = (),
        gone: dict[str, Any] | None = None,
        client: Any = None,
    ) -> None:
        """Mirror a committed list edit in Redis and tell the owner's sessions."""
        k = self.keys(owner)
        with _T_LIST_CHANGE.time():
            await self._list_change(k, owner, added, removed, gone, client)

    async def _list_change(
        self,
        k: UserKeys,
        owner: str,
        added: Iterable[str],
        removed: Iterable[str],
        gone: dict[str, Any] | None,
        client: Any,
    ) -> None:
        await self.scripts.list_change(
            keys=[k.list, k.list_version, k.sessions, k.events],
            args=[
                owner,
                orjson.dumps(list(added)).decode(),
                orjson.dumps(list(removed)).decode(),
                orjson.dumps(gone or {}).decode(),
                self.settings.stream_maxlen,
            ],
            client=client,
        )

    async def delete_user(self, user: str) -> tuple[int, dict[str, Any]] | None:
        """Drop the user's Redis state; return the life that ended and its final `offline`
        item (None if never seen)."""
        k = self.keys(user)
        gone, _nodes, life, _ended_at = await self.scripts.delete_user(
            keys=[k.status, k.sessions, k.list, k.list_version, k.rate, k.due, k.events, k.ended],
            args=[user, now_ms(), self.settings.stream_maxlen, ENDED_TTL_MS],
        )
        if not gone:
            return None
        item: dict[str, Any] = orjson.loads(gone)
        item["version"] = int(item["version"])
        item["updated_at"] = int(item["updated_at"])
        item["avatar"] = None
        return int(life), item

    async def read_statuses(self, users: Sequence[str]) -> dict[str, Status]:
        """Current statuses from Redis; users Redis lacks are hydrated from SQL first."""
        found = await self._read_redis(users)
        missing = [u for u in users if u not in found]
        if missing:
            try:
                await self.hydrate(missing)
            except Unavailable:
                # SQL down and Redis empty for these users: show them as never seen
                # rather than failing the whole snapshot.
                log.warning("database unavailable; %d statuses shown as unseen", len(missing))
                return found
            found.update(await self._read_redis(missing))
        return found

    async def _read_redis(self, users: Sequence[str]) -> dict[str, Status]:
        statuses = await self._redis_statuses.get_many(users)
        return {user: s for user, s in zip(users, statuses, strict=True) if s is not None}

    async def watcher_items(self, users: Sequence[str]) -> list[dict[str, Any]]:
        """Watchers' view of `users`, in order; never-seen users read as offline, version 0."""
        statuses = await self.read_statuses(users)
        return [statuses[u].watcher_item() if u in statuses else unseen_item(u) for u in users]
