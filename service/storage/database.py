"""The SQL source of truth for statuses and buddy lists, on SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import (
    BindParameter,
    Select,
    String,
    Table,
    and_,
    bindparam,
    delete,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from service.domain import Presence, Status
from service.errors import ListFull, Unavailable
from service.storage.models import edges, statuses

T = TypeVar("T")

# Rows or keys per statement: well under SQLite's and PostgreSQL's bound-parameter limits.
CHUNK = 500
LIST_FULL = "list_full"
# SQLite only: this execution option asks for a deferred BEGIN (a read that takes no lock).
_READ_ONLY = "buddycast_read_only"

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    PoolTimeoutError,
    OSError,  # ConnectionRefusedError, TimeoutError, socket.gaierror
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)


@dataclass(frozen=True, slots=True)
class ImportResult:
    """Outcome of one `import_edges` batch; `present` edges count as imported too."""

    added: list[tuple[str, str]]
    present: int
    rejected: list[tuple[int, str]]


def make_engine(url: str) -> AsyncEngine:
    """An engine for `url`: WAL and `BEGIN IMMEDIATE` on SQLite, a checked pool on PostgreSQL."""
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_async_engine(url)
        _configure_sqlite(engine)
        return engine
    # asyncpg waits 60 s for a connection by default: far too long for a readiness probe.
    return create_async_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args={"timeout": 5}
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the driver so that `on_begin` decides how a transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.execute("PRAGMA journal_mode=WAL")
            # SQLite's advice for WAL: commits survive a crash of the process, only an OS
            # crash or power loss can take the last ones; FULL syncs the log on every commit.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=OFF")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Connection) -> None:
        # A deferred BEGIN lets two read-then-write transactions both read, then one
        # write silently over the other; IMMEDIATE takes the write lock up front.
        read_only = bool(conn.get_execution_options().get(_READ_ONLY))
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc`, or an error it was raised from, means the database cannot be reached."""
    current: BaseException | None = exc
    for _ in range(8):
        if current is None:
            return False
        if isinstance(current, _UNAVAILABLE):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__
    return False


@asynccontextmanager
async def unavailable_on_failure() -> AsyncIterator[None]:
    """Raise `Unavailable` from any error that means the database is down or unreachable."""
    try:
        yield
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        raise Unavailable(f"database unavailable: {str(cause) or type(cause).__name__}") from exc


def _text_array(items: Iterable[str]) -> BindParameter[list[str]]:
    return literal(list(items), postgresql.ARRAY(String))


def _chunks(items: Sequence[T], size: int = CHUNK) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# A list comes back as one row with its buddies joined (GROUP_CONCAT on SQLite,
# STRING_AGG on PostgreSQL): a cold list costs one row's handling, not one per buddy. A
# space cannot occur in a user id.
_LIST_SEPARATOR = " "
_JOINED_LISTS = (
    select(edges.c.owner, func.aggregate_strings(edges.c.buddy, _LIST_SEPARATOR))
    .where(edges.c.owner.in_(bindparam("owners", expanding=True)))
    .group_by(edges.c.owner)
)

# Touch an existing edge; executed once per edge, each a primary-key lookup.
_TOUCH = update(edges).where(edges.c.owner == bindparam("o"), edges.c.buddy == bindparam("b"))


class Database:
    """Queries on statuses and edges; every method is one transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._upsert_statuses = self._status_upsert()
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(
            engine.execution_options(**{_READ_ONLY: True}), expire_on_commit=False
        )

    @classmethod
    def connect(cls, url: str) -> Database:
        """Create the engine for `url` (no connection is made until first use)."""
        return cls(make_engine(url))

    async def close(self) -> None:
        """Close every pooled connection."""
        async with unavailable_on_failure():
            await self.engine.dispose()

    @asynccontextmanager
    async def _transaction(self, *, read_only: bool = False) -> AsyncIterator[AsyncSession]:
        maker = self._read_sessions if read_only else self._sessions
        async with unavailable_on_failure(), maker() as session, session.begin():
            yield session

    async def ping(self) -> None:
        """Raise `Unavailable` unless the database answers `SELECT 1`."""
        async with self._transaction(read_only=True) as session:
            await session.execute(text("SELECT 1"))

    async def truncate_all(self) -> None:
        """Delete every status and edge (tests)."""
        async with self._transaction() as session:
            await session.execute(delete(edges))
            await session.execute(delete(statuses))

    # Statuses

    async def get_status(self, user: str) -> Status | None:
        """The persisted status of `user`, or None."""
        return (await self.get_statuses([user])).get(user)

    async def get_statuses(self, users: Sequence[str]) -> dict[str, Status]:
        """The persisted statuses of those of `users` that have one, by user."""
        found: dict[str, Status] = {}
        wanted = list(dict.fromkeys(users))
        if not wanted:
            return found
        async with self._transaction(read_only=True) as session:
            for chunk in _chunks(wanted):
                result = await session.execute(
                    select(statuses).where(statuses.c.user_id.in_(chunk))
                )
                for row in result:
                    found[row.user_id] = Status(
                        user=row.user_id,
                        presence=Presence(row.presence),
                        text=row.text,
                        avatar=row.avatar,
                        version=row.version,
                        updated_at=row.updated_at,
                        life=row.life,
                    )
        return found

    async def upsert_statuses(self, items: Sequence[Status]) -> int:
        """Write each status unless its row is of a later life, or of its life and not older.

        Returns the number of rows inserted or replaced; replays change nothing.
        """
        latest: dict[str, Status] = {}
        for status in items:
            kept = latest.get(status.user)
            # PostgreSQL refuses to touch one row twice in a statement: keep one per user.
            if kept is None or (status.life, status.version) > (kept.life, kept.version):
                latest[status.user] = status
        rows = [
            {
                "user_id": s.user,
                "presence": Presence(s.presence).value,
                "text": s.text,
                "avatar": s.avatar,
                "version": s.version,
                "updated_at": s.updated_at,
                "life": s.life,
            }
            for s in latest.values()
        ]
        written = 0
        if not rows:
            return written
        async with self._transaction() as session:
            for chunk in _chunks(rows):
                result = await session.execute(self._upsert_statuses, list(chunk))
                written += len(result.all())
        return written

    def _status_upsert(self) -> Any:
        # Built once: executed with a list of rows, SQLAlchemy renders it from its cache
        # (a new statement per batch cost about 15 ms of CPU per 100 rows to compile).
        stmt = self._insert(statuses)
        return stmt.on_conflict_do_update(
            index_elements=[statuses.c.user_id],
            set_={
                name: stmt.excluded[name]
                for name in ("presence", "text", "avatar", "version", "updated_at", "life")
            },
            where=or_(
                statuses.c.life < stmt.excluded.life,
                and_(
                    statuses.c.life == stmt.excluded.life,
                    statuses.c.version < stmt.excluded.version,
                ),
            ),
        ).returning(statuses.c.user_id)

    def _insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    async def forget_statuses(self, ended: dict[str, int]) -> None:
        """Delete the rows of lives begun at or before `ended[user]`: those users were deleted."""
        if not ended:
            return
        async with self._transaction() as session:
            for user, before in ended.items():
                await session.execute(
                    delete(statuses).where(statuses.c.user_id == user, statuses.c.life <= before)
                )

    async def delete_user(self, user: str) -> list[str]:
        """Delete `user`'s status, list and every edge to them; return who watched them."""
        async with self._transaction() as session:
            result = await session.execute(
                delete(edges).where(edges.c.buddy == user).returning(edges.c.owner)
            )
            watchers = set(result.scalars()) - {user}
            await session.execute(delete(edges).where(edges.c.owner == user))
            await session.execute(delete(statuses).where(statuses.c.user_id == user))
        return sorted(watchers)

    # Lists

    async def get_list(self, owner: str) -> list[str]:
        """The buddies of `owner`, sorted."""
        async with self._transaction(read_only=True) as session:
            result = await session.execute(select(edges.c.buddy).where(edges.c.owner == owner))
            # Sorted here: the database's collation may not sort like Python.
            return sorted(result.scalars())

    async def get_lists(self, owners: Sequence[str]) -> dict[str, list[str]]:
        """The buddies of each of `owners`, sorted; an owner with none gets `[]`."""
        lists: dict[str, list[str]] = {owner: [] for owner in owners}
        if not lists:
            return lists
        async with self._transaction(read_only=True) as session:
            for chunk in _chunks(list(lists)):
                result = await session.execute(_JOINED_LISTS, {"owners": chunk})
                for owner, joined in result:
                    lists[owner] = sorted(joined.split(_LIST_SEPARATOR))
        return lists

    async def add_edge(self, owner: str, buddy: str, max_buddies: int, now_ms: int) -> bool:
        """Add `owner -> buddy`, True when new; an existing edge is only touched.

        Raises `ListFull` when a new edge would make the list exceed `max_buddies`.
        """
        async with self._transaction() as session:
            result = await self._add_edges(
                session, [(1, owner, buddy)], max_buddies, now_ms, all_or_nothing=True
            )
        return bool(result.added)

    async def remove_edge(self, owner: str, buddy: str) -> bool:
        """Remove `owner -> buddy`; True when it existed."""
        return (await self._remove_edges([(owner, buddy)]))[0]

    async def add_friendship(
        self, a: str, b: str, max_buddies: int, now_ms: int
    ) -> tuple[bool, bool]:
        """Add `a -> b` and `b -> a`, all or nothing; return which of the two were new.

        Raises `ListFull`, changing nothing, when either list would exceed `max_buddies`.
        """
        async with self._transaction() as session:
            result = await self._add_edges(
                session, [(1, a, b), (2, b, a)], max_buddies, now_ms, all_or_nothing=True
            )
        return (a, b) in result.added, (b, a) in result.added

    async def remove_friendship(self, a: str, b: str) -> tuple[bool, bool]:
        """Remove `a -> b` and `b -> a`; return which of the two existed."""
        removed = await self._remove_edges([(a, b), (b, a)])
        return removed[0], removed[1]

    async def import_edges(
        self, items: Sequence[tuple[int, str, str]], max_buddies: int, now_ms: int
    ) -> ImportResult:
        """Add `(line, owner, buddy)` edges in line order, rejecting those past the cap.

        Edges already present are touched and counted in `present`; one transaction.
        """
        if not items:
            return ImportResult([], 0, [])
        async with self._transaction() as session:
            return await self._add_edges(session, items, max_buddies, now_ms, all_or_nothing=False)

    async def _remove_edges(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        async with self._transaction() as session:
            # An OR of key lookups: SQLite scans the whole index for a row-value IN.
            matches = (and_(edges.c.owner == o, edges.c.buddy == b) for o, b in pairs)
            result = await session.execute(
                delete(edges).where(or_(*matches)).returning(edges.c.owner, edges.c.buddy)
            )
            removed = {(row.owner, row.buddy) for row in result}
        return [pair in removed for pair in pairs]

    async def _add_edges(
        self,
        session: AsyncSession,
        items: Sequence[tuple[int, str, str]],
        max_buddies: int,
        now_ms: int,
        *,
        all_or_nothing: bool,
    ) -> ImportResult:
        owners = sorted({owner for _, owner, _ in items})
        await self._lock_owners(session, owners)

        pairs = list(dict.fromkeys((owner, buddy) for _, owner, buddy in items))
        existing: set[tuple[str, str]] = set()
        for chunk in _chunks(pairs):
            found = await session.execute(self._existing_edges(chunk))
            existing.update((row[0], row[1]) for row in found)
        sizes: dict[str, int] = {}
        for owner_chunk in _chunks(owners):
            counted = await session.execute(self._list_sizes(owner_chunk))
            sizes.update((row[0], row[1]) for row in counted)

        # Decide in line order, as if the lines were added one by one.
        added: list[tuple[str, str]] = []
        accepted: set[tuple[str, str]] = set()
        rejected: list[tuple[int, str]] = []
        present = 0
        for line, owner, buddy in items:
            pair = (owner, buddy)
            if pair in existing or pair in accepted:
                present += 1
            elif sizes.get(owner, 0) >= max_buddies:
                if all_or_nothing:
                    raise ListFull(f"the list of {owner} is full ({max_buddies} buddies)")
                rejected.append((line, LIST_FULL))
            else:
                sizes[owner] = sizes.get(owner, 0) + 1
                accepted.add(pair)
                added.append(pair)

        touched = [{"o": owner, "b": buddy} for owner, buddy in pairs if (owner, buddy) in existing]
        for params in _chunks(touched):
            await session.execute(_TOUCH.values(utime=now_ms), params)
        for new in _chunks(added):
            await session.execute(
                insert(edges),
                [{"owner": owner, "buddy": buddy, "utime": now_ms} for owner, buddy in new],
            )
        return ImportResult(added, present, rejected)

    def _existing_edges(self, pairs: Sequence[tuple[str, str]]) -> Select[str, str]:
        """Edges among `pairs` (on SQLite, maybe more: the caller looks pairs up in the result)."""
        if self.dialect != "postgresql":
            # Not a row-value IN, which SQLite runs as a scan of the whole index: two IN
            # lists are looked up on it, though they also match the crosswise pairs.
            return select(edges.c.owner, edges.c.buddy).where(
                edges.c.owner.in_(list({owner for owner, _ in pairs})),
                edges.c.buddy.in_(list({buddy for _, buddy in pairs})),
            )
        # One primary-key probe per pair. A table that a first bulk import is filling has
        # no statistics yet, and PostgreSQL planned IN lists and joins as a sequential
        # scan per batch, ever slower as the table grew.
        given = (
            func.unnest(_text_array(o for o, _ in pairs), _text_array(b for _, b in pairs))
            .table_valued("owner", "buddy")
            .render_derived(name="given")
        )
        probe = (
            select(edges.c.utime)
            .where(edges.c.owner == given.c.owner, edges.c.buddy == given.c.buddy)
            .scalar_subquery()
        )
        return select(given.c.owner, given.c.buddy).where(probe.is_not(None))

    def _list_sizes(self, owners: Sequence[str]) -> Select[str, int]:
        """How many buddies each of `owners` has (owners with none are left out on SQLite)."""
        if self.dialect != "postgresql":
            return (
                select(edges.c.owner, func.count())
                .where(edges.c.owner.in_(owners))
                .group_by(edges.c.owner)
            )
        # A count on the index per owner, for the reason given in `_existing_edges`.
        given = func.unnest(_text_array(owners)).table_valued("owner").render_derived(name="given")
        size = select(func.count()).where(edges.c.owner == given.c.owner).scalar_subquery()
        return select(given.c.owner, size)

    async def _lock_owners(self, session: AsyncSession, owners: Sequence[str]) -> None:
        """Serialize list edits per owner until the transaction ends (PostgreSQL).

        On SQLite `BEGIN IMMEDIATE` already serializes every writer.
        """
        if self.dialect != "postgresql" or not owners:
            return
        # Taken in key order, so two transactions never wait on each other crosswise,
        # even when two owners share a hash. ORDER BY runs before the volatile call.
        await session.execute(
            text(
                "SELECT pg_advisory_xact_lock(k) FROM"
                " (SELECT DISTINCT hashtext(o) AS k FROM unnest(CAST(:owners AS text[])) AS o)"
                " AS keys ORDER BY k"
            ),
            {"owners": list(owners)},
        )
