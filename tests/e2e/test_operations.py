"""What operators scrape and read: every metric on every role, JSON logs without secrets."""

from __future__ import annotations

import asyncio
import re

import orjson
import pytest
from prometheus_client import Counter, Gauge, Histogram

from service import metrics
from tests.procs import API_HEADERS, Client, Deployment

pytestmark = pytest.mark.timeout(120)

NODE_ONLY = {
    "buddycast_sessions_open", "buddycast_connects", "buddycast_disconnects",
    "buddycast_deliveries", "buddycast_propagation_seconds", "buddycast_snapshot_seconds",
    "buddycast_inbox_lag_seconds", "buddycast_outbox_coalesced",
    "buddycast_slow_client_closes",
}  # fmt: skip


def declared() -> dict[str, object]:
    return {
        m._name: m for m in vars(metrics).values() if isinstance(m, Counter | Gauge | Histogram)
    }


async def scrape(http, url: str) -> str:
    async with http.get(url + "/metrics") as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        return await reply.text()


def samples(text: str, name: str) -> list[tuple[str, float]]:
    return [
        (m.group(1) or "", float(m.group(2)))
        for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M)
    ]


async def test_every_metric_is_exposed_by_node_and_worker(deployment: Deployment, http, uid):
    alice, bob = f"{uid}a", f"{uid}b"
    async with http.put(f"{deployment.url()}/v1/friendships/{alice}/{bob}", headers=API_HEADERS):
        pass
    a = await Client.connect(http, deployment.url(0), alice)
    b = await Client.connect(http, deployment.url(0), bob)
    ack = await b.request(op="set_status", text="measured")
    await a.wait(
        lambda f: f["type"] == "status" and f["items"][0]["version"] == ack["item"]["version"]
    )
    await b.request(op="nonsense")
    await a.close()
    await b.close()
    await asyncio.sleep(0.5)  # the node finishes closing the sessions

    node = await scrape(http, deployment.url(0))
    worker_port = deployment.ports[deployment.workers[0].name]
    worker = await scrape(http, f"http://127.0.0.1:{worker_port}")
    for name, metric in declared().items():
        assert name.startswith("buddycast_")
        assert "user" not in getattr(metric, "_labelnames", ())
        kind = {Counter: "counter", Gauge: "gauge", Histogram: "histogram"}[type(metric)]
        assert f"# TYPE {name}{'_total' if kind == 'counter' else ''} {kind}" in node or (
            f"# TYPE {name} {kind}" in node
        ), name
        assert f"# TYPE {name}" in worker, name
    assert samples(node, "buddycast_connects_total")[0][1] >= 2
    assert samples(node, "buddycast_deliveries_total")[0][1] >= 1
    assert samples(node, "buddycast_propagation_seconds_count")[0][1] >= 1
    assert any('code="bad_request"' in lbl for lbl, _ in samples(node, "buddycast_errors_total"))
    assert any(
        'op="set_status"' in lbl for lbl, _ in samples(node, "buddycast_redis_call_seconds_count")
    )
    assert any('code="1000"' in lbl for lbl, _ in samples(node, "buddycast_disconnects_total"))
    assert samples(worker, "buddycast_fanout_entries_total")[0][1] >= 1
    assert samples(worker, "buddycast_persisted_total")[0][1] >= 1
    pending = samples(worker, "buddycast_stream_pending")
    assert any('group="fanout"' in lbl for lbl, _ in pending), worker[-3000:]
    assert any('shard="0"' in lbl for lbl, _ in samples(worker, "buddycast_stream_length"))
    assert set(declared()) >= NODE_ONLY


async def test_json_logs_carry_no_tokens_or_status_texts(make_deployment, http):
    dep = make_deployment(log_format="json", log_level="debug")
    dep.add("node")
    dep.add("worker")
    from tests.procs import token

    secret_text = "my-very-private-status-text"
    bad = token("mallory") + "tampered"
    async with http.get(f"{dep.url()}/v1/ws?token={bad}") as reply:
        assert reply.status == 401
    client = await Client.connect(http, dep.url(), "logged")
    await client.request(op="set_status", text=secret_text)
    await client.close()
    dep.stop()
    for proc in dep.nodes + dep.workers:
        lines = proc.log_path.read_text().splitlines()
        assert lines, proc.name
        for line in lines:
            entry = orjson.loads(line)
            assert {"ts", "level", "logger", "message"} <= entry.keys()
        text = proc.log_path.read_text()
        assert token("logged")[:40] not in text and bad[:40] not in text
        assert secret_text not in text
