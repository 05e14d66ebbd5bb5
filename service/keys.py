"""Every Redis key, stream and group name, and the shard of a user. Pure: no I/O.

All keys of one user carry the hash tag of the user's shard (`{s7}`), so every script
and multi-key command for that user stays in one Redis Cluster slot. A node's own keys
carry the node's tag (`{n:ID}`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from functools import cache

PREFIX = "bc"
FANOUT_GROUP = "fanout"
PERSIST_GROUP = "persist"
NODES = f"{PREFIX}:nodes"
EPOCH = f"{PREFIX}:epoch"

_JUMP_MULTIPLIER = 2862933555777941757
_MASK64 = (1 << 64) - 1


def jump_consistent_hash(key: int, buckets: int) -> int:
    """Lamping and Veach's jump consistent hash: few keys move when `buckets` grows."""
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * _JUMP_MULTIPLIER + 1) & _MASK64
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def shard_for(user: str, shards: int) -> int:
    """The shard that owns `user`: a stable 64-bit hash of the id, jump-hashed."""
    digest = hashlib.blake2b(user.encode(), digest_size=8).digest()
    return jump_consistent_hash(int.from_bytes(digest, "big"), shards)


@cache
def shard_tag(shard: int) -> str:
    return f"{PREFIX}:{{s{shard}}}"


def events_stream(shard: int) -> str:
    """The shard's stream of committed changes, read by the `fanout` and `persist` groups."""
    return f"{shard_tag(shard)}:events"


def due_offline(shard: int) -> str:
    """Sorted set of the shard's users whose `offline` is due, scored by due time (ms)."""
    return f"{shard_tag(shard)}:due"


def dead_letters(shard: int) -> str:
    return f"{shard_tag(shard)}:dead"


class _UserKey:
    """One key of `UserKeys`, formatted when it is read."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __get__(self, keys: UserKeys, owner: object = None) -> str:
        return f"{keys.tag}:{self.kind}:{keys.user}"


class UserKeys:
    """The keys of one user, all in the user's shard slot.

    Each key is formatted when it is read: a node keeps the keys of every user it has
    seen (`PresenceStore.keys`), and seven formatted keys would take 800 bytes a user.
    """

    __slots__ = ("shard", "tag", "user")

    status = _UserKey("st")
    sessions = _UserKey("ss")
    interest = _UserKey("in")
    list = _UserKey("ls")
    list_version = _UserKey("lv")
    rate = _UserKey("rl")
    ended = _UserKey("rip")  # when the user was last deleted: see delete_user.lua

    def __init__(self, user: str, shards: int) -> None:
        self.user = user
        self.shard = shard_for(user, shards)
        self.tag = shard_tag(self.shard)

    @property
    def events(self) -> str:
        return events_stream(self.shard)

    @property
    def due(self) -> str:
        return due_offline(self.shard)


def by_shard(users: Iterable[str], keys_of: Callable[[str], UserKeys]) -> list[list[str]]:
    """`users` grouped by shard, so that each group's keys are in one Cluster slot."""
    groups: dict[int, list[str]] = {}
    for user in users:
        groups.setdefault(keys_of(user).shard, []).append(user)
    return list(groups.values())


def node_tag(node: str) -> str:
    return f"{PREFIX}:{{n:{node}}}"


def node_inbox(node: str) -> str:
    """The node's inbox stream: one entry per fan-out batch with every item for the node."""
    return f"{node_tag(node)}:inbox"


def node_sessions(node: str) -> str:
    """Set of `session user` pairs open on the node, for the reaper when the node dies."""
    return f"{node_tag(node)}:sessions"


def node_interest(node: str) -> str:
    """Set of subjects the node registered interest in, for the reaper when the node dies."""
    return f"{node_tag(node)}:interest"


LIST_LOADED = ""
"""Marker member of a user's Redis list copy: the copy is loaded (it may hold no buddy)."""
