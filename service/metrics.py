"""Every Prometheus object of buddycast. No user ids as labels."""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

SESSIONS_OPEN = Gauge("buddycast_sessions_open", "WebSocket sessions open on this node")
CONNECTS = Counter("buddycast_connects_total", "WebSocket sessions opened")
DISCONNECTS = Counter(
    "buddycast_disconnects_total", "WebSocket sessions closed, by close code", ["code"]
)
CHANGES_COMMITTED = Counter(
    "buddycast_changes_committed_total", "Status changes committed to Redis, by origin", ["origin"]
)
FANOUT_BATCHES = Counter("buddycast_fanout_batches_total", "Batches read by the fanout group")
FANOUT_EVENTS = Counter("buddycast_fanout_events_total", "Stream events expanded by fanout")
FANOUT_ENTRIES = Counter("buddycast_fanout_entries_total", "Node inbox entries written by fanout")
DELIVERIES = Counter("buddycast_deliveries_total", "Status items queued to local sessions")
PROPAGATION = Histogram(
    "buddycast_propagation_seconds",
    "Time from commit to the socket write of a status item (once per change and node for "
    "the sockets written at once, once per item for those written by a session's writer)",
    buckets=_LATENCY_BUCKETS,
)
SNAPSHOT_LATENCY = Histogram(
    "buddycast_snapshot_seconds", "Time to build and queue a snapshot", buckets=_LATENCY_BUCKETS
)
STREAM_LENGTH = Gauge("buddycast_stream_length", "Entries in a shard stream", ["shard"])
STREAM_PENDING = Gauge(
    "buddycast_stream_pending", "Entries pending in a consumer group", ["shard", "group"]
)
REDELIVERIES = Counter(
    "buddycast_redeliveries_total", "Stream entries claimed from a stalled consumer", ["group"]
)
DEAD_LETTERS = Counter(
    "buddycast_dead_letters_total", "Entries moved to the dead-letter stream", ["group"]
)
INBOX_LAG = Histogram(
    "buddycast_inbox_lag_seconds",
    "Age of a node inbox entry when the node reads it",
    buckets=_LATENCY_BUCKETS,
)
OUTBOX_COALESCED = Counter(
    "buddycast_outbox_coalesced_total", "Unsent items replaced by a newer item of the same user"
)
SLOW_CLIENT_CLOSES = Counter(
    "buddycast_slow_client_closes_total", "Sessions closed with 1013 for not keeping up"
)
SILENT_CLIENT_CLOSES = Counter(
    "buddycast_silent_client_closes_total",
    "Sessions closed for sending nothing, pongs included, for two heartbeats",
)
ERRORS = Counter("buddycast_errors_total", "Errors returned to clients, by code", ["code"])
REDIS_LATENCY = Histogram(
    "buddycast_redis_call_seconds", "Redis call latency, by operation", ["op"],
    buckets=_CALL_BUCKETS,
)  # fmt: skip
SQL_LATENCY = Histogram(
    "buddycast_sql_call_seconds", "SQL call latency, by operation", ["op"], buckets=_CALL_BUCKETS
)
PERSISTED = Counter("buddycast_persisted_total", "Statuses written to SQL by the persist group")
OFFLINES_DUE = Counter("buddycast_offlines_total", "Users turned offline by the reaper")
NODES_REAPED = Counter("buddycast_nodes_reaped_total", "Dead nodes cleaned up by the reaper")


def redis_timer(op: str) -> Histogram:
    """The latency child of one Redis operation, bound once at import time by callers."""
    return REDIS_LATENCY.labels(op=op)


def sql_timer(op: str) -> Histogram:
    return SQL_LATENCY.labels(op=op)


GC_PAUSES = Histogram(
    "buddycast_gc_pause_seconds",
    "Pauses of Python's cyclic garbage collector, by generation (2 scans every object)",
    ["generation"],
    buckets=_LATENCY_BUCKETS,
)


def watch_gc() -> None:
    """Time every collection of the cyclic garbage collector into `GC_PAUSES`."""
    started = 0.0
    pauses = [GC_PAUSES.labels(generation=str(g)) for g in range(3)]

    def callback(phase: str, info: dict[str, Any]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        elif started:
            pauses[info["generation"]].observe(time.perf_counter() - started)

    gc.callbacks.append(callback)
