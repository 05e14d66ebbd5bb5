"""`LeanConnection` packs every command into the bytes redis-py's own packer makes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Connection
from redis.exceptions import DataError

from service.redis_conn import LeanConnection

ARGUMENTS = st.one_of(
    st.text(),
    st.binary(),
    st.integers(),
    st.floats(),
    st.binary().map(memoryview),
    st.binary().map(bytearray),
)


def packed(connection: Connection, *args: Any) -> bytes:
    return b"".join(bytes(chunk) for chunk in connection.pack_command(*args))


@given(
    name=st.sampled_from(["GET", "EVALSHA", "CLIENT KILL", b"XADD", b"SCRIPT LOAD"]),
    args=st.lists(ARGUMENTS, max_size=60),
)
def test_any_command_packs_as_redis_py_packs_it(name: str | bytes, args: list[Any]) -> None:
    assert packed(LeanConnection(), name, *args) == packed(Connection(), name, *args)


def test_a_large_value_packs_whole() -> None:
    value = b"v" * 100_000
    assert packed(LeanConnection(), "SET", "k", value) == packed(Connection(), "SET", "k", value)


@pytest.mark.parametrize("bad", [True, None, {"a": 1}, [1]])
def test_what_redis_py_refuses_is_refused_the_same_way(bad: Any) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        LeanConnection().pack_command("SET", "k", bad)
