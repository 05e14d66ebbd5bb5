"""How the bench reports this machine's loopback costs and the floor they put under a
celebrity change."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from service.bench import floor, report
from service.bench.cli import _costs_line
from service.bench.wsclient import _frame_at


def results(target: str | None = None, loopback: bool = True) -> dict[str, Any]:
    costs: dict[str, Any] = {"python_reference_ms": 45.0, "loopback": None}
    if loopback:
        costs["loopback"] = {
            "pairs": 5000, "rounds": 5, "frame_bytes": 161, "write_us": 14.7, "read_us": 5.5,
        }  # fmt: skip
    else:
        costs["loopback_error"] = "[Errno 24] Too many open files"
    latency = {"p50": 5.0, "p95": 150.0, "p99": 230.0, "max": 300.0}
    return {
        "machine": {"cores": 2, **costs},
        "graph": {"users": 20_000, "edges": 1_000_000, "mean_list": 50.0, "max_list": 998},
        "params": {
            "users": 20_000,
            "rate": 200.0,
            "celebrity_every": 5.0,
            "nodes": 2,
            "target": target,
            "settle_seconds": 3.0,
        },
        "import": {"edges": 1_000_000, "seconds": 40.0, "edges_per_s": 25_000.0},
        "connect": {
            "sessions": 20_000,
            "failed": 0,
            "seconds": 28.0,
            "sessions_per_s": 714.0,
            "time_to_snapshot_ms": latency,
        },
        "steady": {
            "changes_sent": 6000,
            "seconds": 30.0,
            "rate": 200.0,
            "rate_achieved": 200.0,
            "celebrity_changes": 6,
            "latency_ms": latency,
            "read_latency_ms": latency,
            "celebrity_latency_ms": latency,
            "ordinary_latency_ms": latency,
            "ack_latency_ms": latency,
            "celebrity_deliveries": 119_994,
            "deliveries": 400_000,
            "deliveries_per_s": 14_000.0,
            "client_loop_lag_max_ms": 100.0,
        },
        "correctness": {
            "missing": 0,
            "checked": 300_000,
            "regressions": 0,
            "foreign": 0,
            "sessions_closed": 0,
        },
        "servers": "n/a",
        "client": {"procs": 2, "cpu_s_total": 80.0, "cpu_s": {"steady": 9.0}, "steady_cores": 0.3},
    }


def test_the_measured_frame_is_a_status_frame_as_a_node_writes_it() -> None:
    frame = floor.bench_frame()
    assert frame[0] == 0x81  # final text frame, unmasked (RFC 6455 5.2)
    bounds = _frame_at(frame, 0)
    assert bounds is not None and bounds[1] == len(frame)
    payload = orjson.loads(frame[bounds[0] :])
    assert payload["type"] == "status"
    (item,) = payload["items"]
    assert set(item) == {"user", "presence", "text", "avatar", "version", "updated_at"}


def test_the_floor_of_a_celebrity_change_is_every_watcher_written_and_read() -> None:
    r = results()
    got = report.celebrity_floor(r)
    assert got == {
        "watchers": 19_999,
        "writes_ms": pytest.approx(294.0),  # 19,999 x 14.7 µs
        "reads_ms": pytest.approx(110.0),  # 19,999 x 5.5 µs
        "node_writes_ms": pytest.approx(147.0),  # shared by 2 nodes
        "cores_ms": pytest.approx(202.0),  # both, on 2 cores
    }
    r["celebrity_floor"] = got
    rows = dict(report.result_rows(r))
    assert rows["socket floor of a celebrity change"] == (
        "19,999 frames written (294 ms of CPU, 147 ms a node) and read (110 ms): "
        "202 ms of the 2 cores at the least"
    )
    (steady,) = [t for t in report.targets(r) if t["name"] == "steady load"]
    assert steady["measured"].endswith("(a node's writes of one celebrity change alone: 147 ms)")


def test_against_a_target_the_nodes_are_unknown_so_only_the_cores_bound_is_given() -> None:
    r = results(target="http://presence.example:8080")
    r["celebrity_floor"] = got = report.celebrity_floor(r)
    assert got is not None and got["node_writes_ms"] is None
    rows = dict(report.result_rows(r))
    assert "a node" not in rows["socket floor of a celebrity change"]
    (steady,) = [t for t in report.targets(r) if t["name"] == "steady load"]
    assert steady["measured"].endswith(
        "(one celebrity change's socket work alone: 202 ms of the cores)"
    )


def test_unmeasured_costs_leave_no_floor_and_say_why() -> None:
    r = results(loopback=False)
    r["celebrity_floor"] = report.celebrity_floor(r)
    assert r["celebrity_floor"] is None
    assert "socket floor of a celebrity change" not in dict(report.result_rows(r))
    (steady,) = [t for t in report.targets(r) if t["name"] == "steady load"]
    assert steady["measured"].endswith("0 missing")
    assert _costs_line(r["machine"]) == (
        "this machine: loopback not measured ([Errno 24] Too many open files); "
        "Python reference 45.0 ms"
    )
    assert _costs_line(results()["machine"]) == (
        "this machine: a loopback frame written in 14.7 µs, read in 5.5 µs; "
        "Python reference 45.0 ms"
    )
