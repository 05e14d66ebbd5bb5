"""What this machine charges for one delivery's socket work, measured before a run.

Every delivery in the bench is a status frame a node writes to a loopback TCP socket and
a generator process reads from the other end, on the same cores. The cost of that write
and that read alone, with nothing of the service or the generator around them, is the
floor under a celebrity change (a write and a read for every watcher), and it tells runs
on machines of different speed apart. A fixed piece of Python work does the same for the
code around the sockets.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import struct
import time
from collections.abc import Callable
from typing import Any

import orjson

from service.bench.wsclient import ANCILLARY_SIZE, stamp_arrivals
from service.protocol import encode_item, framed_status

PYTHON_REFERENCE_REPEAT = 9
WARM_UP_S = 0.5
_LINGER_ABORT = struct.pack("ii", 1, 0)  # close with a reset: no TIME_WAIT left behind


def bench_frame() -> bytes:
    """A status frame as a node writes it for one of the bench's changes."""
    item = {
        "user": "bench-12345",
        "presence": "online",
        "text": "bench:1764295200.123456",
        "avatar": None,
        "version": 17,
        "updated_at": 1764295200123,
    }
    return framed_status(encode_item(item))


def _loopback_pairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    """`count` connected (server side, client side) TCP pairs on 127.0.0.1, set up as the
    node (no Nagle delay) and the generator (kernel arrival stamps) set theirs."""
    pairs: list[tuple[socket.socket, socket.socket]] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        address = listener.getsockname()
        try:
            for _ in range(count):
                client = socket.create_connection(address)
                try:
                    server, _ = listener.accept()
                except BaseException:
                    client.close()
                    raise
                pairs.append((server, client))
                server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                stamp_arrivals(client)
        except BaseException:
            _close(pairs)
            raise
    return pairs


def _close(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    for server, client in pairs:
        for sock in (client, server):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
            sock.close()


def loopback_costs(pairs: int = 5000, rounds: int = 5) -> dict[str, Any]:
    """Microseconds to write one bench frame to a loopback socket and to read it at the other
    end (`recvmsg_into` with its arrival stamp, as the generator reads): the median over
    `rounds` passes over `pairs` connections."""
    frame = bench_frame()
    buffer = bytearray(64 * 1024)
    view = memoryview(buffer)
    connections = _loopback_pairs(pairs)
    writes: list[float] = []
    reads: list[float] = []
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            for server, _client in connections:
                server.send(frame)
            writes.append(time.perf_counter() - started)
            started = time.perf_counter()
            for _server, client in connections:
                size, _, _, _ = client.recvmsg_into([view], ANCILLARY_SIZE)
                if size != len(frame):
                    raise RuntimeError(f"read {size} bytes of a {len(frame)}-byte frame")
            reads.append(time.perf_counter() - started)
    finally:
        _close(connections)
    return {
        "pairs": pairs,
        "rounds": rounds,
        "frame_bytes": len(frame),
        "write_us": round(statistics.median(writes) / pairs * 1e6, 2),
        "read_us": round(statistics.median(reads) / pairs * 1e6, 2),
    }


def python_reference_ms(repeat: int = PYTHON_REFERENCE_REPEAT) -> float:
    """Milliseconds for a fixed piece of the kind of work the service does in Python
    (encode, decode, dicts, sorting): the median of `repeat`, as the best of a few catches
    this machine's fast moments and hides its slow ones."""

    def work() -> None:
        index: dict[str, list[int]] = {}
        for n in range(20_000):
            item = orjson.loads(orjson.dumps({"user": f"u{n}", "version": n, "text": "x" * 20}))
            index.setdefault(item["user"][:4], []).append(item["version"])
        for versions in index.values():
            versions.sort(reverse=True)

    # An idle core takes a few tenths of a second to come up to speed here.
    warm_until = time.perf_counter() + WARM_UP_S
    while time.perf_counter() < warm_until:
        work()
    return round(statistics.median(_timed(work) for _ in range(repeat)) * 1000, 1)


def _timed(work: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def measure(pairs: int = 5000) -> dict[str, Any]:
    """This machine's costs for `results["machine"]`; the loopback ones are None when this
    process may not open enough sockets."""
    costs: dict[str, Any] = {
        "python_reference_ms": python_reference_ms(),
        "python_reference_repeat": PYTHON_REFERENCE_REPEAT,
    }
    try:
        costs["loopback"] = loopback_costs(pairs)
    except OSError as exc:
        costs["loopback"] = None
        costs["loopback_error"] = str(exc)
    return costs
