"""The bench's measure of this machine's loopback, on real sockets."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator

import pytest

from service.bench import floor


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def few_descriptors() -> Iterator[None]:
    """Room for a few dozen more open files only, for the duration of a test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_fds() + 40, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_a_frame_is_written_and_read_on_every_connection_and_none_is_left_open() -> None:
    before = open_fds()
    costs = floor.loopback_costs(pairs=200, rounds=3)
    assert open_fds() == before
    assert costs["pairs"] == 200 and costs["rounds"] == 3
    assert costs["frame_bytes"] == len(floor.bench_frame())
    # A loopback write runs the receiver's side of TCP too: never free.
    assert costs["write_us"] > 0.5 and costs["read_us"] > 0.1


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
@pytest.mark.usefixtures("few_descriptors")
def test_without_enough_descriptors_the_loopback_is_reported_unmeasured() -> None:
    before = open_fds()
    costs = floor.measure(pairs=200)
    assert open_fds() == before  # the pairs opened before the limit are closed
    assert costs["loopback"] is None
    assert "Too many open files" in costs["loopback_error"]
    assert costs["python_reference_ms"] > 0
