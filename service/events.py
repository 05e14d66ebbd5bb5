"""Stream events and node inbox payloads: decoded from Redis fields, encoded once. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from service.domain import Presence, Status

LifeItem = tuple[int, dict[str, Any]]
"""A watcher item with the life of its subject (see `Status`), which only the node reads."""


@dataclass(frozen=True, slots=True)
class ListChange:
    """The list of `owner` changed; `gone` holds the ended life and final item of deleted users."""

    owner: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    gone: dict[str, LifeItem] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UserDeleted:
    user: str
    nodes: tuple[str, ...] = ()


Event = Status | ListChange | UserDeleted


def _json_list(raw: str | None) -> tuple[str, ...]:
    value = orjson.loads(raw) if raw else []
    # Lua's cjson encodes an empty table as an object.
    return tuple(value) if isinstance(value, list) else ()


def decode_event(fields: dict[str, str]) -> Event:
    """One shard-stream entry as a typed event; raise ValueError on a malformed entry."""
    kind = fields.get("k")
    if kind == "s":
        return Status(
            user=fields["u"],
            presence=Presence(fields["p"]),
            text=fields.get("t", ""),
            avatar=fields.get("a") or None,
            version=int(fields["v"]),
            updated_at=int(fields["ts"]),
            visible=fields.get("on") == "1",
            life=int(fields.get("g") or 0),
        )
    if kind == "l":
        return ListChange(
            owner=fields["u"],
            added=_json_list(fields.get("add")),
            removed=_json_list(fields.get("rm")),
            gone=_gone(orjson.loads(fields["gone"]) if fields.get("gone") else {}),
        )
    if kind == "x":
        return UserDeleted(user=fields["u"], nodes=_json_list(fields.get("n")))
    raise ValueError(f"unknown event kind {kind!r}")


def _gone(raw: Any) -> dict[str, LifeItem]:
    # Lua's cjson encodes an empty table as an object, so `{}` and `[]` both mean none.
    if not isinstance(raw, dict):
        return {}
    return {user: (int(life), item) for user, (life, item) in raw.items()}


def status_from_hash(user: str, fields: dict[str, str]) -> Status | None:
    """A user's Redis status hash as a `Status`, or None when the hash is absent."""
    if not fields or "v" not in fields:
        return None
    return Status(
        user=user,
        presence=Presence(fields.get("p") or "online"),
        text=fields.get("t", ""),
        avatar=fields.get("a") or None,
        version=int(fields["v"]),
        updated_at=int(fields.get("ts") or 0),
        visible=fields.get("on") == "1",
        life=int(fields.get("g") or 0),
    )


@dataclass(slots=True)
class InboxBatch:
    """What one fan-out batch holds for one node."""

    items: list[LifeItem] = field(default_factory=list)
    lists: list[ListChange] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "s": self.items,
                "l": [[c.owner, c.added, c.removed, c.gone] for c in self.lists],
                "x": self.deleted,
            }
        )

    @classmethod
    def decode(cls, raw: str | bytes) -> InboxBatch:
        data = orjson.loads(raw)
        return cls(
            items=[(int(life), item) for life, item in data.get("s", ())],
            lists=[ListChange(o, tuple(a), tuple(r), _gone(g)) for o, a, r, g in data.get("l", ())],
            deleted=list(data.get("x", ())),
        )
