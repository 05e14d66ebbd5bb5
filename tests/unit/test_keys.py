"""Shards and Redis key names: jump hash properties and Cluster hash tags (ARCHITECTURE.md)."""

from __future__ import annotations

import random
import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from service import keys
from service.keys import UserKeys, jump_consistent_hash, shard_for

USER_KEY_ATTRS = ("status", "sessions", "interest", "list", "list_version", "rate", "events", "due")
ID_ALPHABET = string.ascii_letters + string.digits + "_.:@-"
user_ids = st.text(alphabet=ID_ALPHABET, min_size=1, max_size=64)


def sample_keys(count: int, seed: int = 1234) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(count)]


def hash_tag(key: str) -> str:
    """The part of `key` Redis Cluster hashes: the first non-empty `{...}`."""
    match = re.search(r"\{([^}]+)\}", key)
    assert match is not None, key
    return match.group(1)


# ----- jump consistent hash -------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "buckets", "expected"),
    [(1, 1, 0), (42, 57, 43), (0xDEAD10CC, 1, 0), (0xDEAD10CC, 666, 361), (256, 1024, 520)],
)
def test_jump_hash_reference_vectors(key: int, buckets: int, expected: int) -> None:
    # Vectors of the widely used Go port of Lamping and Veach's algorithm.
    assert jump_consistent_hash(key, buckets) == expected


@pytest.mark.parametrize("buckets", [0, -1, -100])
def test_jump_hash_needs_a_bucket(buckets: int) -> None:
    with pytest.raises(ValueError):
        jump_consistent_hash(1, buckets)


@given(st.integers(0, 2**64 - 1), st.integers(1, 5000))
def test_jump_hash_is_in_range_and_stable(key: int, buckets: int) -> None:
    result = jump_consistent_hash(key, buckets)
    assert 0 <= result < buckets
    assert jump_consistent_hash(key, buckets) == result


@given(st.integers(0, 2**64 - 1))
def test_one_bucket_holds_everything(key: int) -> None:
    assert jump_consistent_hash(key, 1) == 0


@given(st.integers(0, 2**64 - 1), st.integers(1, 2000))
def test_growing_by_one_bucket_moves_keys_only_into_the_new_bucket(key: int, n: int) -> None:
    before, after = jump_consistent_hash(key, n), jump_consistent_hash(key, n + 1)
    assert after in (before, n)


@pytest.mark.parametrize("n", [1, 3, 7, 15, 31, 100])
def test_growing_by_one_bucket_moves_about_one_in_n_plus_one(n: int) -> None:
    sample = sample_keys(20_000)
    moved = sum(jump_consistent_hash(k, n) != jump_consistent_hash(k, n + 1) for k in sample)
    expected = len(sample) / (n + 1)
    assert abs(moved - expected) <= 0.15 * expected + 30


@pytest.mark.parametrize("buckets", [2, 16, 64])
def test_keys_spread_evenly(buckets: int) -> None:
    sample = sample_keys(32_000, seed=99)
    counts = [0] * buckets
    for k in sample:
        counts[jump_consistent_hash(k, buckets)] += 1
    mean = len(sample) / buckets
    assert all(abs(c - mean) <= 0.15 * mean for c in counts), counts


# ----- shard_for ------------------------------------------------------------------------


def test_shard_for_is_pinned() -> None:
    # Changing the hash remaps every user of a running deployment: these must never move.
    assert [shard_for(u, 16) for u in ("alice", "bob", "carol")] == [1, 13, 9]
    assert [shard_for(u, 1024) for u in ("alice", "bob", "carol")] == [552, 138, 9]


@given(user_ids, st.integers(1, 16384))
def test_shard_for_is_deterministic_and_in_range(user: str, shards: int) -> None:
    shard = shard_for(user, shards)
    assert 0 <= shard < shards
    assert shard_for(user, shards) == shard


@given(user_ids)
def test_single_shard(user: str) -> None:
    assert shard_for(user, 1) == 0


def test_users_spread_over_shards() -> None:
    used = {shard_for(f"user-{i}", 16) for i in range(2000)}
    assert used == set(range(16))


# ----- user keys ------------------------------------------------------------------------


@given(user_ids, st.integers(1, 64))
def test_every_user_key_carries_the_shard_tag(user: str, shards: int) -> None:
    uk = UserKeys(user, shards)
    assert uk.user == user
    assert uk.shard == shard_for(user, shards)
    expected_tag = f"s{uk.shard}"
    for attr in USER_KEY_ATTRS:
        key = getattr(uk, attr)
        assert f"{{{expected_tag}}}" in key
        assert hash_tag(key) == expected_tag


@given(user_ids, st.integers(1, 64))
def test_every_user_key_is_in_one_cluster_slot(user: str, shards: int) -> None:
    uk = UserKeys(user, shards)
    slots = {key_slot(getattr(uk, attr).encode()) for attr in USER_KEY_ATTRS}
    assert slots == {key_slot(keys.events_stream(uk.shard).encode())}
    assert key_slot(keys.due_offline(uk.shard).encode()) in slots
    assert key_slot(keys.dead_letters(uk.shard).encode()) in slots


def test_shard_keys_share_the_tag() -> None:
    for shard in (0, 7, 15):
        tag = f"s{shard}"
        assert hash_tag(keys.events_stream(shard)) == tag
        assert hash_tag(keys.due_offline(shard)) == tag
        assert hash_tag(keys.dead_letters(shard)) == tag
        assert hash_tag(keys.shard_tag(shard)) == tag
    assert len({keys.events_stream(s) for s in range(16)}) == 16
    assert keys.events_stream(3) != keys.due_offline(3) != keys.dead_letters(3)


def test_user_keys_are_distinct_per_user_and_kind() -> None:
    alice, bob = UserKeys("alice", 16), UserKeys("bob", 16)
    per_user = ("status", "sessions", "interest", "list", "list_version", "rate")
    a_keys = [getattr(alice, attr) for attr in per_user]
    b_keys = [getattr(bob, attr) for attr in per_user]
    assert len(set(a_keys)) == len(per_user)
    assert not set(a_keys) & set(b_keys)
    assert all("alice" in k for k in a_keys)


def test_users_of_one_shard_share_its_stream() -> None:
    same = [u for u in (f"u{i}" for i in range(200)) if shard_for(u, 16) == shard_for("u0", 16)]
    assert len(same) > 1
    assert {UserKeys(u, 16).events for u in same} == {keys.events_stream(shard_for("u0", 16))}
    assert {UserKeys(u, 16).due for u in same} == {keys.due_offline(shard_for("u0", 16))}


# ----- node keys ------------------------------------------------------------------------


@pytest.mark.parametrize("node", ["node-1", "host-1234-abcdef", "a"])
def test_node_keys_share_the_node_tag(node: str) -> None:
    node_keys = [keys.node_inbox(node), keys.node_sessions(node), keys.node_interest(node)]
    assert len(set(node_keys)) == 3
    for key in node_keys:
        assert f"{{n:{node}}}" in key
        assert hash_tag(key) == f"n:{node}"
    assert len({key_slot(k.encode()) for k in node_keys}) == 1
    assert hash_tag(keys.node_tag(node)) == f"n:{node}"


def test_different_nodes_have_different_inboxes() -> None:
    assert keys.node_inbox("n1") != keys.node_inbox("n2")


def test_group_names() -> None:
    assert keys.FANOUT_GROUP != keys.PERSIST_GROUP
