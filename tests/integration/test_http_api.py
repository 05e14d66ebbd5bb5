"""The backend HTTP API against PROTOCOL.md, on SQLite and PostgreSQL, with live sessions.

Every test runs the node app in-process with its worker (fixture `api`: max_buddies=5,
4 shards, offline grace 0.5 s), on the private Redis and on each database.
"""

from __future__ import annotations

import asyncio
import io
import json
import resource
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from aiohttp import ClientResponse, ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient

from service.auth import mint_token
from service.node.context import DATABASE, HUB
from service.storage import Database
from service.worker.persist import Persist
from tests.integration.conftest import API_KEY, JWT_SECRET, auth

Client = TestClient[Any, Any]
Serve = Callable[..., AbstractAsyncContextManager[Client]]

ERROR_CODES = {
    "bad_request",
    "too_large",
    "rate_limited",
    "unavailable",
    "internal",
    "unauthorized",
    "not_found",
    "list_full",
}
NEVER_SEEN = {"presence": "offline", "text": "", "avatar": None, "version": 0, "updated_at": 0}

# Every /v1/ route of the backend API, with a body where the route takes one.
ROUTES: list[tuple[str, str, bytes | None]] = [
    ("PUT", "/v1/users/alice/buddies/bob", None),
    ("DELETE", "/v1/users/alice/buddies/bob", None),
    ("GET", "/v1/users/alice/buddies", None),
    ("PUT", "/v1/friendships/alice/bob", None),
    ("DELETE", "/v1/friendships/alice/bob", None),
    ("GET", "/v1/users/alice/status", None),
    ("PUT", "/v1/users/alice/status", b'{"presence":"away","text":"x"}'),
    ("DELETE", "/v1/users/alice", None),
    ("POST", "/v1/import", b'{"user":"alice","buddy":"bob"}\n'),
    ("GET", "/v1/openapi.yaml", None),
]

# Each route with `{x}` in each of its id positions.
ID_ROUTES: list[tuple[str, str, bytes | None]] = [
    ("PUT", "/v1/users/{x}/buddies/bob", None),
    ("PUT", "/v1/users/alice/buddies/{x}", None),
    ("DELETE", "/v1/users/{x}/buddies/bob", None),
    ("DELETE", "/v1/users/alice/buddies/{x}", None),
    ("GET", "/v1/users/{x}/buddies", None),
    ("PUT", "/v1/friendships/{x}/bob", None),
    ("PUT", "/v1/friendships/alice/{x}", None),
    ("DELETE", "/v1/friendships/{x}/bob", None),
    ("DELETE", "/v1/friendships/alice/{x}", None),
    ("GET", "/v1/users/{x}/status", None),
    ("PUT", "/v1/users/{x}/status", b'{"text":"hi"}'),
    ("DELETE", "/v1/users/{x}", None),
]

# Invalid ids as they appear in a URL path (percent-encoded where needed).
BAD_IDS = {
    "65-chars": "a" * 65,
    "space": "a%20b",
    "slash": "a%2Fb",
    "unicode": "%C3%A9ric",
    "emoji": "bob%F0%9F%98%80",
    "star": "a*b",
}


# ----- helpers ------------------------------------------------------------------------


def never_seen(user: str) -> dict[str, Any]:
    return {"user": user, **NEVER_SEEN}


async def expect_error(
    response: ClientResponse, status: int, code: str | None, sent: object = ""
) -> None:
    """`response` is an error with `status` and the JSON body {"code": code, "message": M}."""
    text = await response.text()
    what = f"{response.method} {response.url} {sent!r}"[:300]
    assert response.status == status, f"{what} -> {response.status} {text}"
    assert response.content_type == "application/json", f"{what} -> {text}"
    body = json.loads(text)
    assert set(body) == {"code", "message"}, f"{what} -> {body}"
    assert isinstance(body["message"], str) and body["message"], f"{what} -> {body}"
    if code is None:
        assert body["code"] in ERROR_CODES, f"{what} -> {body}"
    else:
        assert body["code"] == code, f"{what} -> {body}"


async def expect_204(response: ClientResponse) -> None:
    assert response.status == 204, f"{response.method} {response.url}: {await response.text()}"


async def get_json(api: Client, path: str) -> Any:
    response = await api.get(path, headers=auth())
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def buddies(api: Client, user: str) -> dict[str, dict[str, Any]]:
    """`user`'s list as items by buddy id."""
    body = await get_json(api, f"/v1/users/{user}/buddies")
    assert set(body) == {"items"}, body
    items = {item["user"]: item for item in body["items"]}
    assert len(items) == len(body["items"]), body
    return items


async def put_status(api: Client, user: str, **fields: Any) -> dict[str, Any]:
    response = await api.put(f"/v1/users/{user}/status", json=fields, headers=auth())
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def put_buddy(api: Client, user: str, buddy: str) -> None:
    await expect_204(await api.put(f"/v1/users/{user}/buddies/{buddy}", headers=auth()))


def recent(ms: int) -> bool:
    return abs(time.time() * 1000 - ms) < 60_000


async def next_frame(ws: ClientWebSocketResponse, wait_s: float = 5.0) -> dict[str, Any]:
    message = await ws.receive(timeout=wait_s)
    assert message.type is WSMsgType.TEXT, f"expected a text frame: {message!r}"
    frame: dict[str, Any] = json.loads(message.data)
    return frame


async def connect(api: Client, user: str) -> tuple[ClientWebSocketResponse, list[dict[str, Any]]]:
    """Open a session of `user`; return it and its snapshot items."""
    ws = await api.ws_connect("/v1/ws?token=" + mint_token(user, JWT_SECRET))
    hello = await next_frame(ws)
    assert hello["type"] == "hello" and hello["user"] == user, hello
    assert hello["node"] == "test-node", hello
    snapshot = await next_frame(ws)
    assert snapshot["type"] == "snapshot", snapshot
    items: list[dict[str, Any]] = snapshot["items"]
    return ws, items


async def assert_quiet(ws: ClientWebSocketResponse, ref: str = "sync") -> None:
    """No frame within 0.5 s, and the next frame after a ping is its pong."""
    try:
        message = await ws.receive(timeout=0.5)
    except TimeoutError:
        pass
    else:
        pytest.fail(f"unexpected frame: {message.type!r} {message.data!r}")
    await ws.send_json({"op": "ping", "ref": ref})
    assert await next_frame(ws) == {"type": "pong", "ref": ref}


def list_frame(added: list[dict[str, Any]], removed: list[str]) -> dict[str, Any]:
    return {"type": "list", "added": added, "removed": removed}


# ----- authentication, health, routing ----------------------------------------------


async def test_every_v1_route_needs_the_api_key(api: Client) -> None:
    wrong: list[dict[str, str]] = [
        {},
        auth("j" * 32),
        auth(API_KEY[:-1]),
        auth(API_KEY + "k"),
        {"Authorization": "Bearer "},
        {"Authorization": API_KEY},
        {"Authorization": f"Basic {API_KEY}"},
        {"X-Api-Key": API_KEY},
    ]
    for method, path, body in ROUTES:
        for headers in wrong:
            response = await api.request(method, path, data=body, headers=headers)
            await expect_error(response, 401, "unauthorized", headers)
    # Authentication comes before validation.
    response = await api.get("/v1/users/a%20b/status")
    await expect_error(response, 401, "unauthorized")
    # Nothing was changed by the refused requests.
    assert await buddies(api, "alice") == {}
    assert await get_json(api, "/v1/users/alice/status") == never_seen("alice")


async def test_health_readiness_and_metrics_need_no_key(api: Client) -> None:
    for headers in ({}, auth("j" * 32)):
        healthz = await api.get("/healthz", headers=headers)
        assert healthz.status == 200, await healthz.text()
        readyz = await api.get("/readyz", headers=headers)
        assert readyz.status == 200, await readyz.text()
        metrics = await api.get("/metrics", headers=headers)
        assert metrics.status == 200
        assert metrics.content_type == "text/plain"
        assert "# TYPE " in await metrics.text()


async def test_unknown_route_is_404_json(api: Client) -> None:
    for path in ("/v1/nope", "/v1/users/alice/nope", "/v1/users/alice/buddies/bob/x", "/nope"):
        await expect_error(await api.get(path, headers=auth()), 404, "not_found")


async def test_wrong_method_is_405_json_with_allow(api: Client) -> None:
    for method, path, allowed in (
        ("POST", "/v1/users/alice/status", {"GET", "PUT"}),
        ("PATCH", "/v1/users/alice/buddies/bob", {"PUT", "DELETE"}),
        ("GET", "/v1/users/alice/buddies/bob", {"PUT", "DELETE"}),
        ("PUT", "/v1/users/alice/buddies", {"GET"}),
        ("GET", "/v1/import", {"POST"}),
        ("PUT", "/v1/import", {"POST"}),
        ("GET", "/v1/friendships/alice/bob", {"PUT", "DELETE"}),
        ("GET", "/v1/users/alice", {"DELETE"}),
        ("POST", "/healthz", {"GET"}),
    ):
        response = await api.request(method, path, headers=auth())
        allow = {m.strip() for m in response.headers.get("Allow", "").split(",")} - {"HEAD"}
        assert allow == allowed, (method, path, response.headers.get("Allow"))
        await expect_error(response, 405, None)


# ----- identities ---------------------------------------------------------------------


async def test_invalid_ids_are_400_on_every_route(api: Client) -> None:
    for method, template, body in ID_ROUTES:
        for bad in BAD_IDS.values():
            path = template.replace("{x}", bad)
            response = await api.request(method, path, data=body, headers=auth())
            await expect_error(response, 400, "bad_request")
    # Nothing was stored under the valid ids either.
    assert await buddies(api, "alice") == {}
    assert await buddies(api, "bob") == {}


async def test_ids_at_the_limits_are_accepted(api: Client) -> None:
    longest = "L" * 64
    punctuated = "Az09_.:@-"
    await put_buddy(api, longest, punctuated)
    await put_buddy(api, punctuated, longest)
    assert set(await buddies(api, longest)) == {punctuated}
    assert set(await buddies(api, punctuated)) == {longest}
    item = await put_status(api, longest, text="edge")
    assert item["user"] == longest


# ----- buddies --------------------------------------------------------------------------


async def test_put_buddy_is_idempotent(api: Client) -> None:
    await put_buddy(api, "alice", "bob")
    await put_buddy(api, "alice", "bob")
    assert await buddies(api, "alice") == {"bob": never_seen("bob")}
    # Edges are directed: bob's list is untouched.
    assert await buddies(api, "bob") == {}


async def test_put_buddy_refuses_self(api: Client) -> None:
    await expect_error(
        await api.put("/v1/users/alice/buddies/alice", headers=auth()), 400, "bad_request"
    )
    assert await buddies(api, "alice") == {}


async def test_list_cap(api: Client) -> None:
    for n in range(1, 6):
        await put_buddy(api, "alice", f"b{n}")
    response = await api.put("/v1/users/alice/buddies/b6", headers=auth())
    await expect_error(response, 409, "list_full")
    # An existing edge at the cap is only touched.
    await put_buddy(api, "alice", "b3")
    await put_buddy(api, "alice", "b5")
    assert set(await buddies(api, "alice")) == {"b1", "b2", "b3", "b4", "b5"}
    # Room again after a removal.
    await expect_204(await api.delete("/v1/users/alice/buddies/b1", headers=auth()))
    await put_buddy(api, "alice", "b6")
    assert set(await buddies(api, "alice")) == {"b2", "b3", "b4", "b5", "b6"}
    await expect_error(
        await api.put("/v1/users/alice/buddies/b1", headers=auth()), 409, "list_full"
    )


async def test_delete_buddy_also_when_absent(api: Client) -> None:
    await put_buddy(api, "alice", "bob")
    await put_buddy(api, "alice", "carol")
    await expect_204(await api.delete("/v1/users/alice/buddies/bob", headers=auth()))
    assert set(await buddies(api, "alice")) == {"carol"}
    await expect_204(await api.delete("/v1/users/alice/buddies/bob", headers=auth()))
    await expect_204(await api.delete("/v1/users/nobody/buddies/bob", headers=auth()))
    assert set(await buddies(api, "alice")) == {"carol"}


async def test_get_buddies_shows_current_statuses(api: Client) -> None:
    assert await get_json(api, "/v1/users/alice/buddies") == {"items": []}
    await put_buddy(api, "alice", "bob")
    await put_buddy(api, "alice", "carol")
    assert await buddies(api, "alice") == {"bob": never_seen("bob"), "carol": never_seen("carol")}

    own = await put_status(api, "bob", presence="away", text="at lunch")
    assert own["presence"] == "away" and own["text"] == "at lunch"
    assert own["version"] > 0
    # bob has no session: watchers see him offline with no text, at the new version.
    bob = {**own, "presence": "offline", "text": ""}
    assert await buddies(api, "alice") == {"bob": bob, "carol": never_seen("carol")}


# ----- friendships ----------------------------------------------------------------------


async def test_friendship_creates_and_removes_both_edges(api: Client) -> None:
    await expect_204(await api.put("/v1/friendships/alice/bob", headers=auth()))
    assert set(await buddies(api, "alice")) == {"bob"}
    assert set(await buddies(api, "bob")) == {"alice"}
    # Idempotent.
    await expect_204(await api.put("/v1/friendships/bob/alice", headers=auth()))
    assert set(await buddies(api, "alice")) == {"bob"}
    assert set(await buddies(api, "bob")) == {"alice"}

    await expect_204(await api.delete("/v1/friendships/bob/alice", headers=auth()))
    assert await buddies(api, "alice") == {}
    assert await buddies(api, "bob") == {}
    await expect_204(await api.delete("/v1/friendships/alice/bob", headers=auth()))

    # Also removes a one-sided edge.
    await put_buddy(api, "carol", "dave")
    await expect_204(await api.delete("/v1/friendships/dave/carol", headers=auth()))
    assert await buddies(api, "carol") == {}


async def test_friendship_refuses_self(api: Client) -> None:
    response = await api.put("/v1/friendships/alice/alice", headers=auth())
    await expect_error(response, 400, "bad_request")
    assert await buddies(api, "alice") == {}


async def test_friendship_is_all_or_nothing_at_the_cap(api: Client) -> None:
    for n in range(1, 6):
        await put_buddy(api, "alice", f"b{n}")
    for path in ("/v1/friendships/alice/bob", "/v1/friendships/bob/alice"):
        await expect_error(await api.put(path, headers=auth()), 409, "list_full")
        # Neither edge was created.
        assert set(await buddies(api, "alice")) == {"b1", "b2", "b3", "b4", "b5"}
        assert await buddies(api, "bob") == {}

    # An existing edge at the cap does not count as new: the other edge is added.
    await expect_204(await api.delete("/v1/users/alice/buddies/b5", headers=auth()))
    await put_buddy(api, "alice", "carol")
    await expect_204(await api.put("/v1/friendships/carol/alice", headers=auth()))
    assert set(await buddies(api, "alice")) == {"b1", "b2", "b3", "b4", "carol"}
    assert set(await buddies(api, "carol")) == {"alice"}


# ----- statuses -------------------------------------------------------------------------


async def test_status_of_a_never_seen_user(api: Client) -> None:
    assert await get_json(api, "/v1/users/nobody/status") == never_seen("nobody")


async def test_put_status_returns_the_own_view(api: Client) -> None:
    before = await get_json(api, "/v1/users/alice/status")
    assert before == never_seen("alice")
    versions = [0]

    own = await put_status(api, "alice", presence="invisible", text="secret")
    assert own == {
        "user": "alice",
        "presence": "invisible",
        "text": "secret",
        "avatar": None,
        "version": own["version"],
        "updated_at": own["updated_at"],
    }
    assert recent(own["updated_at"])
    versions.append(own["version"])
    # Watchers' view: offline, no text, same version.
    assert await get_json(api, "/v1/users/alice/status") == {
        **own,
        "presence": "offline",
        "text": "",
    }

    # Fields not given are kept.
    own = await put_status(api, "alice", avatar="https://x/y.png")
    assert (own["presence"], own["text"], own["avatar"]) == (
        "invisible",
        "secret",
        "https://x/y.png",
    )
    versions.append(own["version"])
    own = await put_status(api, "alice", presence="busy")
    assert (own["presence"], own["text"], own["avatar"]) == ("busy", "secret", "https://x/y.png")
    versions.append(own["version"])
    own = await put_status(api, "alice", avatar=None, text="")
    assert (own["presence"], own["text"], own["avatar"]) == ("busy", "", None)
    versions.append(own["version"])
    own = await put_status(api, "alice", presence="online", avatar="http://x/z.png")
    assert (own["presence"], own["text"], own["avatar"]) == ("online", "", "http://x/z.png")
    versions.append(own["version"])

    assert versions == sorted(set(versions)), versions
    seen = await get_json(api, "/v1/users/alice/status")
    assert seen["version"] == own["version"] and seen["updated_at"] == own["updated_at"]
    assert (seen["presence"], seen["text"]) == ("offline", "")


async def test_put_status_limits(api: Client) -> None:
    emoji = "\N{GRINNING FACE}" * 280
    assert (await put_status(api, "alice", text=emoji))["text"] == emoji
    assert (await put_status(api, "alice", text="t" * 280))["text"] == "t" * 280
    longest = "https://x/" + "a" * (2048 - len("https://x/"))
    assert (await put_status(api, "alice", avatar=longest))["avatar"] == longest
    # A body of exactly 8 KiB is accepted.
    body = b'{"text":"padded"}'
    body += b" " * (8192 - len(body))
    response = await api.put(
        "/v1/users/alice/status",
        data=body,
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["text"] == "padded"


BAD_STATUS_BODIES: list[Any] = [
    {},
    {"mood": "happy"},
    {"presence": "online", "mood": "happy"},
    {"op": "set_status", "presence": "online"},
    {"ref": "r1", "text": "x"},
    {"presence": "offline"},
    {"presence": "ONLINE"},
    {"presence": "idle"},
    {"presence": None},
    {"presence": 1},
    {"text": "t" * 281},
    {"text": "\N{GRINNING FACE}" * 281},
    {"text": 5},
    {"avatar": "ftp://x/y.png"},
    {"avatar": "https://x/" + "a" * (2049 - len("https://x/"))},
    {"avatar": "not a url"},
    {"avatar": "javascript:alert(1)"},
    {"avatar": 5},
    [{"text": "x"}],
    "text",
    None,
]
INVALID_JSON = [b"", b"not json", b'{"text": "x"', b"{'text': 'x'}", b"\xff\xfe", b"{} {}"]


async def test_put_status_refuses_bad_bodies(api: Client) -> None:
    headers = {**auth(), "Content-Type": "application/json"}
    raw_bodies = [json.dumps(body).encode() for body in BAD_STATUS_BODIES] + INVALID_JSON
    for raw in raw_bodies:
        response = await api.put("/v1/users/alice/status", data=raw, headers=headers)
        await expect_error(response, 400, "bad_request", raw)
    # None of them changed anything.
    assert await get_json(api, "/v1/users/alice/status") == never_seen("alice")


async def test_put_status_body_over_8_kib_is_too_large(api: Client) -> None:
    body = b'{"text":"padded"}'
    body += b" " * (8193 - len(body))
    headers = {**auth(), "Content-Type": "application/json"}
    response = await api.put("/v1/users/alice/status", data=body, headers=headers)
    await expect_error(response, 413, "too_large")

    async def streamed() -> AsyncIterator[bytes]:
        yield b'{"text":"x"'
        for _ in range(20):
            yield b" " * 1000
        yield b"}"

    response = await api.put("/v1/users/alice/status", data=streamed(), headers=headers)
    await expect_error(response, 413, "too_large")
    response = await api.put(
        "/v1/users/alice/status", data=io.BytesIO(b" " * (2 * 1024 * 1024)), headers=headers
    )
    await expect_error(response, 413, "too_large")
    assert await get_json(api, "/v1/users/alice/status") == never_seen("alice")


async def test_put_status_is_not_rate_limited(api: Client) -> None:
    versions = []
    for n in range(20):
        versions.append((await put_status(api, "alice", text=f"n{n}"))["version"])
    assert versions == sorted(set(versions)), versions
    assert (await get_json(api, "/v1/users/alice/status"))["version"] == versions[-1]


# ----- deleting a user ------------------------------------------------------------------


async def test_delete_user(api: Client, database_url: str) -> None:
    first = await put_status(api, "zed", text="fresh")  # what a never-seen user's first PUT gets
    await put_status(api, "bob", presence="busy", text="gone soon")
    await put_status(api, "bob", avatar="https://x/bob.png")
    await put_buddy(api, "bob", "carol")
    await put_buddy(api, "alice", "bob")
    await put_buddy(api, "alice", "carol")
    await expect_204(await api.put("/v1/friendships/bob/dave", headers=auth()))

    # Let the worker persist bob's status before deleting him.
    db = Database.connect(database_url)
    try:
        for _ in range(100):
            if await db.get_status("bob") is not None:
                break
            await asyncio.sleep(0.05)
        assert await db.get_status("bob") is not None

        await expect_204(await api.delete("/v1/users/bob", headers=auth()))
        assert await get_json(api, "/v1/users/bob/status") == never_seen("bob")
        assert await buddies(api, "bob") == {}
        assert set(await buddies(api, "alice")) == {"carol"}
        assert await buddies(api, "dave") == {}

        # Late events of the deleted user do not bring the row back.
        await asyncio.sleep(1.0)
        assert await db.get_status("bob") is None
        assert await db.get_list("bob") == []
        assert await get_json(api, "/v1/users/bob/status") == never_seen("bob")
    finally:
        await db.close()

    # Deleting again, or deleting a never-seen user, is fine.
    await expect_204(await api.delete("/v1/users/bob", headers=auth()))
    await expect_204(await api.delete("/v1/users/nobody", headers=auth()))

    # The id used again starts again from 0, like a never-seen user.
    again = await put_status(api, "bob", text="back")
    assert again["version"] == first["version"]
    assert again["avatar"] is None and again["presence"] == "online"


async def test_an_id_used_again_never_reaches_a_watcher_of_the_deleted_user(api: Client) -> None:
    """A watcher whose removal is still on its way when the id is used again sees the
    subject leave its list, and nothing of the new user until a list adds them."""
    store, db = api.app[HUB].store, api.app[DATABASE]
    await put_buddy(api, "alice", "bob")
    await put_status(api, "bob", text="old bob")
    alice_ws, (bob,) = await connect(api, "alice")
    assert bob["text"] == "" and bob["presence"] == "offline"

    # DELETE /v1/users/bob, stopped before it tells the owners: alice's removal is late.
    ended = await store.delete_user("bob")
    assert ended is not None
    await db.delete_user("bob")
    gone = await next_frame(alice_ws)
    assert gone == {"type": "status", "items": [ended[1]]}, gone

    reborn = await put_status(api, "bob", text="new bob")
    assert reborn["version"] == 1
    assert await next_frame(alice_ws) == list_frame([], ["bob"])
    # The late removal changes nothing more.
    await store.change_list("alice", removed=["bob"], gone={"bob": ended})
    await assert_quiet(alice_ws)

    # Added again, alice gets the new bob, whose versions start low again.
    await put_buddy(api, "alice", "bob")
    (added,) = (await next_frame(alice_ws))["added"]
    assert (added["version"], added["presence"]) == (1, "offline")
    bob_ws, _ = await connect(api, "bob")
    frame = await next_frame(alice_ws)
    assert [(i["version"], i["text"]) for i in frame["items"]] == [(2, "new bob")], frame
    await bob_ws.close()
    await alice_ws.close()


async def test_a_sql_read_begun_before_a_deletion_does_not_bring_the_user_back(
    api: Client,
) -> None:
    store, db = api.app[HUB].store, api.app[DATABASE]
    await put_status(api, "bob", text="old bob")
    for _ in range(100):  # persisted
        if await db.get_status("bob") is not None:
            break
        await asyncio.sleep(0.05)
    # Redis forgot bob, SQL still has him: a status read now must not hydrate the old row.
    await store.delete_user("bob")
    assert await db.get_status("bob") is not None
    assert await get_json(api, "/v1/users/bob/status") == never_seen("bob")
    await db.delete_user("bob")
    assert (await put_status(api, "bob", text="new"))["version"] == 1


async def test_a_sql_write_begun_before_a_deletion_does_not_bring_the_user_back(
    api: Client,
) -> None:
    store, db = api.app[HUB].store, api.app[DATABASE]
    mine = await put_status(api, "bob", text="old bob")
    k = store.keys("bob")
    (entry,) = [
        (entry_id, fields)
        for entry_id, fields in await store.redis.xrange(k.events)
        if fields.get("u") == "bob" and fields.get("v") == str(mine["version"])
    ]
    # The persist group checked Redis (bob is there), then the deletion ran, then it wrote.
    await store.redis.set(k.ended, str(int(entry[1]["g"]) + 1))
    await db.delete_user("bob")
    await Persist(store).handle([entry])
    assert await db.get_status("bob") is None


# ----- import ---------------------------------------------------------------------------


def _exact(line: str, size: int) -> str:
    """`line` (a JSON object) padded with spaces after its `{` to exactly `size` bytes."""
    pad = size - len(line.encode())
    assert pad >= 0
    return "{" + " " * pad + line[1:]


async def test_import(api: Client) -> None:
    await put_buddy(api, "alice", "pre")
    lines = [
        b'{"user":"alice","buddy":"b1"}\n',  # 1 ok
        b"\n",  # 2 blank
        b"   \t \r\n",  # 3 whitespace only, CRLF
        b'{"user":"alice","buddy":"b2"}\r\n',  # 4 ok, CRLF
        b"{not json\n",  # 5 bad_request
        b'{"user":"bad id","buddy":"b9"}\n',  # 6 bad_request
        b'{"user":"alice","buddy":"alice"}\n',  # 7 bad_request: self edge
        _exact('{"user":"alice","buddy":"b8"}', 1025).encode() + b"\n",  # 8 too_large
        b'{"user":"alice","buddy":"pre"}\n',  # 9 already present: imported
        _exact('{"user":"bob","buddy":"alice"}', 1024).encode() + b"\r\n",  # 10 ok
        b'{"user":"alice","buddy":"b3"}\n',  # 11 ok (alice: 4)
        b'{"user":"alice","buddy":"b4"}\n',  # 12 ok (alice: 5)
        b'{"user":"alice","buddy":"b5"}\n',  # 13 list_full
        b'{"user":"alice","buddy":"b1"}\n',  # 14 present: imported
        b"\xff\xfe\n",  # 15 bad_request: not UTF-8
        b"[1,2]\n",  # 16 bad_request
        '{"user":"carol","buddy":"\u00e9"}\n'.encode(),  # 17 bad_request
        b'{"user":"carol","buddy":"' + b"c" * 65 + b'"}\n',  # 18 bad_request
        b'{"user":"carol"}\n',  # 19 bad_request
        b'{"user":"carol","buddy":"dave"}',  # 20 ok, no final newline
    ]
    response = await api.post("/v1/import", data=b"".join(lines), headers=auth())
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    assert await response.json() == {
        "imported": 8,
        "rejected": [
            {"line": 5, "code": "bad_request"},
            {"line": 6, "code": "bad_request"},
            {"line": 7, "code": "bad_request"},
            {"line": 8, "code": "too_large"},
            {"line": 13, "code": "list_full"},
            {"line": 15, "code": "bad_request"},
            {"line": 16, "code": "bad_request"},
            {"line": 17, "code": "bad_request"},
            {"line": 18, "code": "bad_request"},
            {"line": 19, "code": "bad_request"},
        ],
    }
    assert set(await buddies(api, "alice")) == {"pre", "b1", "b2", "b3", "b4"}
    assert set(await buddies(api, "bob")) == {"alice"}
    assert set(await buddies(api, "carol")) == {"dave"}


async def test_import_streamed_in_small_pieces(api: Client) -> None:
    body = (
        b'{"user":"alice","buddy":"bob"}\r\n'
        + b'{"user":"alice","buddy":"' + b"x" * 200_000 + b'"}\n'
        + b"\r\n"
        + b'{"user":"alice","buddy":"carol"}\r\n'
        + b'{"user":"alice","buddy":"dave"}\n'
    )  # fmt: skip

    async def pieces() -> AsyncIterator[bytes]:
        # Cut right after each '\r' too, so line ends straddle pieces.
        start = 0
        for end in range(1, len(body) + 1):
            if end - start >= 997 or body[end - 1 : end] == b"\r" or end == len(body):
                yield body[start:end]
                start = end

    response = await api.post("/v1/import", data=pieces(), headers=auth())
    assert response.status == 200, await response.text()
    assert await response.json() == {"imported": 3, "rejected": [{"line": 2, "code": "too_large"}]}
    assert set(await buddies(api, "alice")) == {"bob", "carol", "dave"}


async def test_import_empty_body(api: Client) -> None:
    response = await api.post("/v1/import", data=b"", headers=auth())
    assert response.status == 200, await response.text()
    assert await response.json() == {"imported": 0, "rejected": []}


@pytest.mark.timeout(600)
async def test_import_100k_edges(
    serve: Serve, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    owners, per_owner = 2000, 50

    async def body() -> AsyncIterator[bytes]:
        for o in range(owners):
            yield b"".join(
                b'{"user":"owner%d","buddy":"buddy%d"}\n' % (o, (o * 7 + b) % 10_000)
                for b in range(per_owner)
            )

    async with serve(max_buddies=1000) as client:
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        response = await client.post("/v1/import", data=body(), headers=auth())
        result = await response.json()
        elapsed = time.perf_counter() - started
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert response.status == 200, result
        assert result == {"imported": owners * per_owner, "rejected": []}
        for o in (0, 999, 1999):
            got = await buddies(client, f"owner{o}")
            assert set(got) == {f"buddy{(o * 7 + b) % 10_000}" for b in range(per_owner)}

    database = "sqlite" if database_url.startswith("sqlite") else "postgres"
    with capsys.disabled():
        print(
            f"\n[import 100k {database}] {owners * per_owner} edges in {elapsed:.2f} s:"
            f" {owners * per_owner / elapsed:,.0f} edges/s;"
            f" peak RSS +{(rss_after - rss_before) / 1024:.1f} MiB"
            f" (peak {rss_after / 1024:.1f} MiB)"
        )


# ----- live effects on connected sessions ------------------------------------------------


async def test_buddy_changes_reach_the_owners_sessions(api: Client) -> None:
    bob = await put_status(api, "bob", text="hello")
    alice_ws, snapshot = await connect(api, "alice")
    assert snapshot == []

    await put_buddy(api, "alice", "bob")
    bob_seen = {**bob, "presence": "offline", "text": ""}
    assert await next_frame(alice_ws) == list_frame([bob_seen], [])

    # Re-PUT of an existing edge sends no frame.
    await put_buddy(api, "alice", "bob")
    await assert_quiet(alice_ws)
    await put_buddy(api, "alice", "carol")
    assert await next_frame(alice_ws) == list_frame([never_seen("carol")], [])

    await expect_204(await api.delete("/v1/users/alice/buddies/bob", headers=auth()))
    assert await next_frame(alice_ws) == list_frame([], ["bob"])
    await assert_quiet(alice_ws)
    await alice_ws.close()


async def test_list_changes_reach_every_session_of_the_owner(api: Client) -> None:
    await put_buddy(api, "alice", "carol")
    first, items = await connect(api, "alice")
    second, items_too = await connect(api, "alice")
    assert items == items_too == [never_seen("carol")]

    # Each session gets the list frame, and no status of dave before it (dave is not
    # in its list until then) nor after it (that would repeat the version).
    await put_buddy(api, "alice", "dave")
    for ws in (first, second):
        assert await next_frame(ws) == list_frame([never_seen("dave")], [])
    for ws in (first, second):
        await assert_quiet(ws)
    await expect_204(await api.delete("/v1/users/alice/buddies/carol", headers=auth()))
    for ws in (first, second):
        assert await next_frame(ws) == list_frame([], ["carol"])
    await first.close()
    await second.close()


async def test_friendship_changes_reach_both_users(api: Client) -> None:
    alice_ws, _ = await connect(api, "alice")
    bob_ws, _ = await connect(api, "bob")
    alice = await get_json(api, "/v1/users/alice/status")
    bob = await get_json(api, "/v1/users/bob/status")
    assert alice["presence"] == "online" and bob["presence"] == "online"

    await expect_204(await api.put("/v1/friendships/alice/bob", headers=auth()))
    assert await next_frame(alice_ws) == list_frame([bob], [])
    assert await next_frame(bob_ws) == list_frame([alice], [])

    # Re-PUT of an existing friendship sends no frames.
    await expect_204(await api.put("/v1/friendships/bob/alice", headers=auth()))
    await assert_quiet(alice_ws)
    await assert_quiet(bob_ws)

    await expect_204(await api.delete("/v1/friendships/alice/bob", headers=auth()))
    assert await next_frame(alice_ws) == list_frame([], ["bob"])
    assert await next_frame(bob_ws) == list_frame([], ["alice"])
    await alice_ws.close()
    await bob_ws.close()


async def test_status_put_reaches_watchers(api: Client) -> None:
    await put_buddy(api, "alice", "bob")
    bob_ws, _ = await connect(api, "bob")
    alice_ws, snapshot = await connect(api, "alice")
    assert [(i["user"], i["presence"]) for i in snapshot] == [("bob", "online")]

    own = await put_status(api, "bob", presence="away", text="at lunch")
    frame = await next_frame(alice_ws)
    assert frame == {"type": "status", "items": [own]}
    assert own["version"] > snapshot[0]["version"]

    # Invisible: watchers see offline with no text; the author's response shows the choice.
    own = await put_status(api, "bob", presence="invisible")
    assert (own["presence"], own["text"]) == ("invisible", "at lunch")
    frame = await next_frame(alice_ws)
    assert frame == {"type": "status", "items": [{**own, "presence": "offline", "text": ""}]}
    await alice_ws.close()
    await bob_ws.close()


async def test_delete_user_closes_sessions_and_tells_watchers(api: Client) -> None:
    await put_buddy(api, "alice", "bob")
    await put_buddy(api, "carol", "bob")
    await put_buddy(api, "bob", "alice")
    bob_ws, _ = await connect(api, "bob")
    alice_ws, snapshot = await connect(api, "alice")
    (bob,) = snapshot
    assert bob["user"] == "bob" and bob["presence"] == "online"
    # bob watches alice: he sees her come online.
    frame = await next_frame(bob_ws)
    assert [(i["user"], i["presence"]) for i in frame["items"]] == [("alice", "online")], frame

    await expect_204(await api.delete("/v1/users/bob", headers=auth()))

    message = await bob_ws.receive(timeout=5)
    assert message.type is WSMsgType.CLOSE, message
    assert message.data == 1000, message
    assert message.extra == "user deleted", message

    frame = await next_frame(alice_ws)
    assert frame["type"] == "status", frame
    (offline,) = frame["items"]
    assert offline["user"] == "bob"
    assert (offline["presence"], offline["text"]) == ("offline", "")
    assert offline["version"] > bob["version"]
    assert await next_frame(alice_ws) == list_frame([], ["bob"])

    assert await buddies(api, "alice") == {}
    assert await buddies(api, "carol") == {}
    assert await get_json(api, "/v1/users/bob/status") == never_seen("bob")
    await alice_ws.close()


async def test_import_reaches_connected_owners(api: Client) -> None:
    alice_ws, _ = await connect(api, "alice")
    body = (
        b'{"user":"alice","buddy":"bob"}\n'
        b'{"user":"dave","buddy":"alice"}\n'
        b'{"user":"alice","buddy":"carol"}\n'
    )
    response = await api.post("/v1/import", data=body, headers=auth())
    assert await response.json() == {"imported": 3, "rejected": []}
    added: list[dict[str, Any]] = []
    while len(added) < 2:
        frame = await next_frame(alice_ws)
        assert frame["type"] == "list" and frame["removed"] == [], frame
        added.extend(frame["added"])
    assert sorted(added, key=lambda i: i["user"]) == [never_seen("bob"), never_seen("carol")]

    # Importing edges that are already there sends nothing.
    response = await api.post("/v1/import", data=body, headers=auth())
    assert await response.json() == {"imported": 3, "rejected": []}
    await assert_quiet(alice_ws)
    await alice_ws.close()
