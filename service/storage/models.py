"""The SQL schema: users' last persisted statuses and buddy-list edges."""

from __future__ import annotations

from sqlalchemy import BigInteger, MetaData, String, Table, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so later migrations (batch mode on SQLite) can address them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class StatusRow(Base):
    """A user's status as last persisted; `(life, version)` only ever grows.

    `life` tells apart the users who held one id: deleting a user ends its life, and
    the id used again starts a higher one, with versions from 0 again.
    """

    __tablename__ = "statuses"

    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    presence: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text, default="", server_default="")
    avatar: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)  # ms since the epoch
    life: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class EdgeRow(Base):
    """`owner` watches `buddy`; `utime` is when the edge was last added or touched (ms)."""

    __tablename__ = "edges"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Indexed for "who watches this user" (delete_user).
    buddy: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    utime: Mapped[int] = mapped_column(BigInteger)


# The plain tables, for Core statements (bulk upserts) that need no ORM bookkeeping.
statuses: Table = Base.metadata.tables["statuses"]
edges: Table = Base.metadata.tables["edges"]
