"""Schemathesis fuzzes every route of the backend HTTP API on the real app, on both databases.

The promise kept: a client's mistake gets a 4xx with a JSON `{"code", "message"}` body,
never a 5xx, and every answer matches service/openapi.yaml (status, content type, body).
The app runs with its worker on a real TCP port, served by an event loop in a thread of
its own, so schemathesis's synchronous `requests` calls reach it like any other client.
Every `/v1/` request is also sent again without the API key or with a wrong one (401).
BUDDYCAST_FUZZ_EXAMPLES=500 fuzzes deeper than the default 25 examples per operation.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import checks

from service.config import Settings
from service.node.app import create_app
from service.worker import consumer

from .conftest import API_KEY, JWT_SECRET

T = TypeVar("T")

OPENAPI = Path(__file__).resolve().parents[2] / "service" / "openapi.yaml"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_EXAMPLES = int(os.environ.get("BUDDYCAST_FUZZ_EXAMPLES", "25"))
# A small cap, so that fuzzed PUTs and imports also reach `list_full` (409).
MAX_BUDDIES = 3
# Routes whose two ids must differ. Equal ids are a client mistake (400, also accepted),
# so they are filtered out of the generated data to spend the examples on other inputs.
PAIRED_IDS = {"putBuddy": ("user", "buddy"), "putFriendship": ("a", "b")}

CONFIG = schemathesis.Config.from_dict(
    {
        "headers": AUTH,
        "generation": {
            "mode": "all",
            "max-examples": MAX_EXAMPLES,
            "with-security-parameters": False,
        },
        "operations": [
            # Any text is a valid NDJSON body (bad lines are reported line by line, with
            # a 200), so there is no invalid body to generate: positive data only.
            {"include-operation-id": "importEdges", "generation": {"mode": "positive"}},
        ],
    }
)
schema = schemathesis.openapi.from_path(OPENAPI, config=CONFIG)


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: schemathesis.SerializationContext, value: Any) -> bytes | None:
    """Send the generated NDJSON text as it is (lone surrogates make bytes that are not UTF-8)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")


def _operation_id(ctx: schemathesis.HookContext) -> str:
    return str(ctx.operation.definition.raw.get("operationId", "")) if ctx.operation else ""


@schema.hook
def filter_path_parameters(ctx: schemathesis.HookContext, path_parameters: Any) -> bool:
    names = PAIRED_IDS.get(_operation_id(ctx))
    if not names or not path_parameters:
        return True
    first, second = (unquote(str(path_parameters.get(name, ""))) for name in names)
    return first != second


def _ndjson_bodies() -> st.SearchStrategy[str]:
    """Import bodies with structure: edges among few users (lists fill up), bad lines."""
    users = st.sampled_from(["alice", "bob", "carol", "dave", "erin", "a:b@c.d-e_f"])
    ids = st.one_of(
        users,
        st.from_regex(r"\A[A-Za-z0-9_.:@-]{1,64}\Z"),
        st.text(max_size=70),
        st.none(),
        st.integers(),
    )
    good_edge = st.builds(lambda u, b: json.dumps({"user": u, "buddy": b}), users, users)
    edge = st.builds(lambda u, b: json.dumps({"user": u, "buddy": b}), ids, ids)
    other_json = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=6,
    ).map(json.dumps)
    line = st.one_of(
        good_edge,
        good_edge,
        edge,
        other_json,
        st.sampled_from(["", " ", "\t", '{"user":"alice","buddy":"alice"}']),
        st.text(alphabet=st.characters(exclude_characters="\r\n"), max_size=30),
        st.integers(1000, 1100).map(lambda n: json.dumps({"user": "alice", "buddy": "b" * n})),
    )
    return st.builds(
        lambda lines, end, last: end.join(lines) + (end if last else ""),
        st.lists(line, max_size=12) | st.lists(good_edge, min_size=4, max_size=20),
        st.sampled_from(["\n", "\r\n"]),
        st.booleans(),
    )


@schema.hook
def before_generate_body(
    ctx: schemathesis.HookContext, strategy: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    if _operation_id(ctx) == "importEdges":
        return st.one_of(strategy, _ndjson_bodies())
    if _operation_id(ctx) == "putStatus":
        # Around the 8 KiB limit: 413 `too_large` or 400 (the text is too long).
        return st.one_of(strategy, st.integers(8150, 8250).map(lambda n: {"text": "x" * n}))
    return strategy


def _task_stacks(loop: asyncio.AbstractEventLoop) -> str:
    """Where every task of `loop` waits, innermost frame last (for a stuck shutdown)."""
    lines: list[str] = []
    for task in asyncio.all_tasks(loop):
        frames: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is not None:
                frames.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
        lines.append(f"{task.get_name()}: " + " <- ".join(frames))
    return "\n".join(lines)


class _Server:
    """The app with its worker on 127.0.0.1, served by a loop in a thread of its own."""

    def __init__(self, app_settings: Settings) -> None:
        self.settings = app_settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-app", daemon=True)
        self.runner: web.AppRunner | None = None

    def _run(self, coro: Coroutine[Any, Any, T], what: str, timeout: float = 30) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            stacks = _task_stacks(self.loop)
            future.cancel()
            pytest.fail(f"the app took over {timeout} s to {what}; its tasks:\n{stacks}")

    async def _start(self) -> str:
        self.runner = web.AppRunner(create_app(self.settings, with_worker=True))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        self.thread.start()
        return self._run(self._start(), "start")

    def stop(self) -> None:
        try:
            if self.runner is not None:
                self._run(self.runner.cleanup(), "stop", timeout=60)
        finally:
            self._run(self.loop.shutdown_asyncgens(), "stop")
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def base_url(redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app (with its worker) on a free port; its URL."""
    # The worker stops after its current blocking stream read; a short read keeps each
    # test's shutdown short (the default, 2 s, would double the run time of this file).
    monkeypatch.setattr(consumer, "BLOCK_MS", 100)
    server = _Server(
        Settings(
            redis_url=redis_url,
            database_url=database_url,
            jwt_secret=JWT_SECRET,
            api_key=API_KEY,
            shards=4,
            max_buddies=MAX_BUDDIES,
            node_id="fuzz-node",
        )
    )
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


def json_error_body(ctx: schemathesis.CheckContext, response: Any, case: Any) -> None:
    """A 4xx has a JSON `{"code": str, "message": str}` body and nothing else."""
    if not 400 <= response.status_code < 500:
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.split(";")[0].strip() == "application/json", (
        f"{response.status_code} with Content-Type {content_type!r}: {response.text[:200]!r}"
    )
    body = json.loads(response.text)
    assert isinstance(body, dict) and set(body) == {"code", "message"}, body
    assert isinstance(body["code"], str) and isinstance(body["message"], str), body


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    json_error_body,
]
WRONG_KEYS: list[str | None] = [None, "Bearer " + "j" * 32, API_KEY, "Basic " + API_KEY]


def _without_key(
    case: schemathesis.Case[Any], base_url: str, session: requests.Session, key: str | None
) -> None:
    """The same request without the API key (or with a wrong one) gets 401 `unauthorized`."""
    kwargs = case.as_transport_kwargs(base_url=base_url)
    headers = {k: v for k, v in kwargs.pop("headers").items() if k.lower() != "authorization"}
    if key is not None:
        headers["Authorization"] = key
    response = session.request(**kwargs, headers=headers, timeout=10)
    assert response.status_code == 401, (key, response.status_code, response.text[:200])
    assert response.json()["code"] == "unauthorized", response.text
    case.validate_response(response, checks=CHECKS)


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=MAX_EXAMPLES)
def test_openapi_fuzz(
    case: schemathesis.Case[Any], base_url: str, session: requests.Session
) -> None:
    case.call_and_validate(base_url=base_url, session=session, checks=CHECKS, timeout=10)
    if case.operation.path.startswith("/v1/"):
        for key in WRONG_KEYS:
            _without_key(case, base_url, session, key)
