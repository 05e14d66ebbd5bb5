"""The seeded synthetic graph of the benchmark: power-law friendships plus one celebrity. Pure.

User 0 is the celebrity: every other user's list holds them, and their own list is empty.
Every other user gets a friend count from a bounded power law (density ~ x^-2) and the
friendships are paired at random (a configuration model), so `a` lists `b` exactly when
`b` lists `a`. A list is the user's friends plus the celebrity, at most `max_list` long.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import orjson

CELEBRITY = 0
_PAIRING_ROUNDS = 12


@dataclass(frozen=True, slots=True)
class Graph:
    """Friend lists by user index; user 0 is the celebrity, watched by everyone."""

    friends: tuple[tuple[int, ...], ...]
    seed: int
    mean_list: float
    max_list: int

    @property
    def users(self) -> int:
        return len(self.friends)

    def buddies(self, user: int) -> tuple[int, ...]:
        """The list of `user`: their friends, then the celebrity (the celebrity's is empty)."""
        if user == CELEBRITY:
            return ()
        return (*self.friends[user], CELEBRITY)

    def list_sizes(self) -> list[int]:
        return [len(self.buddies(u)) for u in range(self.users)]

    def edge_count(self) -> int:
        """Directed edges to import: both directions of each friendship, plus user → celebrity."""
        return sum(self.list_sizes())


def user_name(prefix: str, user: int) -> str:
    """The user id of index `user` (valid: prefixes are checked by the caller)."""
    return f"{prefix}celeb" if user == CELEBRITY else f"{prefix}u{user}"


def bounded_pareto_lower(mean: float, high: float) -> float:
    """The lower bound L for which a bounded Pareto (shape 1) on [L, high] has this mean."""
    if not 0 < mean < high:
        raise ValueError("mean must be between 0 and the upper bound")

    def mean_of(low: float) -> float:
        return low * high * math.log(high / low) / (high - low)

    lo, hi = 1e-9, high * (1 - 1e-12)
    for _ in range(200):  # the mean grows with L: bisection converges
        mid = (lo + hi) / 2
        if mean_of(mid) < mean:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def friend_counts(rng: random.Random, users: int, mean: float, high: int) -> list[int]:
    """Wanted friend counts of users 1..users-1 (index 0, the celebrity, gets 0)."""
    counts = [0] * users
    if high <= 0 or mean <= 0:
        return counts
    if mean >= high:
        return [0] + [high] * (users - 1)
    low = bounded_pareto_lower(mean, high)
    ratio = 1 - low / high  # inverse CDF of the bounded Pareto with shape 1
    for user in range(1, users):
        x = low / (1 - rng.random() * ratio)
        counts[user] = min(high, max(0, round(x)))
    return counts


def generate(users: int, mean_list: float, max_list: int, seed: int) -> Graph:
    """A graph of `users` users (the celebrity included); deterministic for `seed`."""
    if users < 2:
        raise ValueError("the graph needs at least 2 users")
    if max_list < 1:
        raise ValueError("max_list must be at least 1")
    rng = random.Random(seed)
    # One place of every list is the celebrity's; nobody can befriend more than users - 2.
    high = min(max_list - 1, users - 2)
    counts = friend_counts(rng, users, mean_list - 1, high)
    stubs = [user for user, count in enumerate(counts) for _ in range(count)]
    adjacency: list[set[int]] = [set() for _ in range(users)]
    # Pair stubs at random; a self or duplicate pair goes back for another round, so the
    # realised counts stay close to the wanted ones and never exceed them.
    for _ in range(_PAIRING_ROUNDS):
        if len(stubs) < 2:
            break
        rng.shuffle(stubs)
        left: list[int] = []
        for a, b in zip(stubs[0::2], stubs[1::2], strict=False):
            if a == b or b in adjacency[a]:
                left += (a, b)
            else:
                adjacency[a].add(b)
                adjacency[b].add(a)
        if len(stubs) % 2:
            left.append(stubs[-1])
        if len(left) == len(stubs):
            break
        stubs = left
    friends = tuple(tuple(sorted(adjacency[u])) for u in range(users))
    return Graph(friends=friends, seed=seed, mean_list=mean_list, max_list=max_list)


def import_lines(graph: Graph, prefix: str, owners: Sequence[int] | None = None) -> Iterator[bytes]:
    """NDJSON lines `{"user","buddy"}` for every edge, grouped by owner (SQL looks them up
    by owner, so a batch of lines touches few owners)."""
    for owner in owners if owners is not None else range(graph.users):
        name = user_name(prefix, owner)
        for buddy in graph.buddies(owner):
            yield orjson.dumps({"user": name, "buddy": user_name(prefix, buddy)}) + b"\n"
