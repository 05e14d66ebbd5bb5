"""`buddycast bench` end to end: a tiny run on its own deployment, its JSON and its docs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service.embedded_redis import RedisNotFound, find_redis_server
from service.node.hub import SPREAD_CHUNK
from tests.conftest import unavailable

pytestmark = pytest.mark.timeout(180)

TINY = [
    "--users", "200", "--mean-list", "10", "--max-list", "50", "--seconds", "5",
    "--rate", "50", "--celebrity-every", "2", "--nodes", "2", "--workers", "1",
]  # fmt: skip

RESULT_FIELDS = [
    "import.edges",
    "import.seconds",
    "connect.sessions",
    "connect.failed",
    "connect.seconds",
    "connect.time_to_snapshot_ms.p50",
    "connect.time_to_snapshot_ms.p99",
    "connect.time_to_snapshot_ms.max",
    "steady.changes_sent",
    "steady.rate_achieved",
    "steady.celebrity_changes",
    "steady.latency_ms.p50",
    "steady.latency_ms.p95",
    "steady.latency_ms.p99",
    "steady.latency_ms.max",
    "steady.celebrity_latency_ms.p50",
    "steady.celebrity_latency_ms.p99",
    "steady.celebrity_latency_ms.max",
    "steady.ordinary_latency_ms.p99",
    "steady.ack_latency_ms.p99",
    "steady.deliveries",
    "steady.deliveries_per_s",
    "correctness.missing",
    "disconnect.seconds",
    "correctness.checked",
    "correctness.regressions",
    "client.procs",
    "client.cpu_s_total",
    "machine.cpu_model",
    "machine.cores",
    "machine.python",
    "machine.redis",
    "machine.python_reference_ms",
    "machine.python_reference_repeat",
    "machine.loopback.write_us",
    "machine.loopback.read_us",
    "celebrity_floor.node_writes_ms",
    "celebrity_floor.cores_ms",
    "params.users",
    "graph.edges",
]


def field(results: dict[str, Any], dotted: str) -> Any:
    value: Any = results
    for part in dotted.split("."):
        assert isinstance(value, dict) and part in value, f"{dotted} missing from the JSON"
        value = value[part]
    return value


def test_tiny_bench_runs_clean_and_reports_every_field(tmp_path: Path) -> None:
    try:
        find_redis_server()
    except RedisNotFound as exc:
        unavailable(str(exc))
    out = tmp_path / "bench.json"
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Old\n\nold figures\n\n## Notes\n\n- 2026-01-01: kept by hand\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDYCAST_")}
    done = subprocess.run(
        [sys.executable, "-m", "service", "bench", *TINY, "--json", str(out),
         "--write-docs", str(docs), "--find-capacity", "--step-seconds", "2",
         "--max-steps", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads(out.read_text())
    for name in RESULT_FIELDS:
        assert field(results, name) is not None, f"{name} is null"
    assert results["connect"]["sessions"] == 200
    assert results["connect"]["failed"] == 0
    assert results["correctness"]["missing"] == 0
    assert results["correctness"]["checked"] > 0
    assert results["steady"]["celebrity_changes"] >= 2
    assert results["steady"]["deliveries"] > results["steady"]["changes_sent"]

    servers = results["servers"]
    assert sorted(s["role"] for s in servers) == ["node", "node", "redis", "worker"]
    for server in servers:
        assert server["cpu_s"]["total"] > 0
        assert server["peak_rss_mib"] > 0
    nodes = [s for s in servers if s["role"] == "node"]
    assert sum(s["sessions"] for s in nodes) == 200
    assert all(s["rss_per_session_kib"] is not None for s in nodes)
    assert {t["name"] for t in results["targets"]} >= {"connect storm", "steady load"}

    # Two capacity searches: the steady phase's mix, then ordinary changes alone.
    capacity = results["capacity"]
    plain = capacity["without_celebrity"]
    assert capacity["celebrity_every"] == 2 and plain["celebrity_every"] == 0
    for search in (capacity, plain):
        assert 1 <= len(search["steps"]) <= 2 and search["stopped_because"]
        assert all(step["p99_ms"] is not None for step in search["steps"])
    assert all(step["celebrity_p99_ms"] is None for step in plain["steps"])
    assert capacity["final_missing"] == 0 and capacity["final_checked"] > 0
    # Every session dropped at once; the nodes deregistered them all.
    assert results["disconnect"]["sessions"] == 200 and results["disconnect"]["left"] == 0
    assert results["disconnect"]["seconds"] > 0
    # The kernel charges CPU a clock tick (10 ms) at a time, and dropping 100 sessions can
    # take less than that on a fast machine: the phase's figure is reported, maybe 0.
    assert all(s["cpu_s"]["disconnect"] >= 0 for s in nodes)
    (row,) = [t for t in results["targets"] if t["name"] == "capacity"]
    assert "without celebrity changes" in row["measured"]

    # The table is on stdout; the progress lines went to stderr.
    assert "propagation p50 / p95 / p99 / max" in done.stdout
    assert "steady" in done.stderr and "sessions 200/200" in done.stderr

    written = docs.read_text()
    for heading in ("## Machine", "## Parameters", "## Results", "## Targets vs measured"):
        assert heading in written
    assert "make bench" in written
    assert "| capacity without celebrity changes |" in written
    assert "| disconnect | 200 sessions dropped at once" in written
    assert "| loopback frame (" in written and "| Python reference |" in written
    assert "| socket floor of a celebrity change | 199 frames written" in written
    assert written.rstrip().endswith("## Notes\n\n- 2026-01-01: kept by hand")
    assert "old figures" not in written


def test_a_celebrity_spread_over_chunks_keeps_every_guarantee(tmp_path: Path) -> None:
    """On one node the celebrity has more watchers than `SPREAD_CHUNK`, so each of its
    changes (and its coming online during the storm) reaches them over several loop
    passes while others connect, change and get snapshots: nothing may go missing,
    repeat or reach a session outside the celebrity's watchers."""
    try:
        find_redis_server()
    except RedisNotFound as exc:
        unavailable(str(exc))
    users = 3 * SPREAD_CHUNK
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDYCAST_")}
    done = subprocess.run(
        [sys.executable, "-m", "service", "bench", "--users", str(users), "--mean-list", "4",
         "--max-list", "20", "--seconds", "6", "--rate", "100", "--celebrity-every", "0.5",
         "--nodes", "1", "--workers", "1", "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    correctness = results["correctness"]
    assert results["connect"]["sessions"] == users and results["connect"]["failed"] == 0
    assert results["steady"]["celebrity_changes"] >= 10
    assert results["steady"]["deliveries"] >= 10 * (users - 1)
    assert correctness["checked"] > users
    broken = {k: correctness[k] for k in ("missing", "regressions", "foreign")}
    assert broken == {"missing": 0, "regressions": 0, "foreign": 0}
