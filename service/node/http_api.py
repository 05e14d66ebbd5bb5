"""The backend HTTP API: lists, friendships, statuses, deletion, bulk import, health."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from importlib.resources import files
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import metrics
from service.auth import api_key_matches, bearer
from service.domain import validate_user_id
from service.errors import BadRequest, BuddycastError, NotFound, TooLarge, Unauthorized, Unavailable
from service.node.context import DATABASE, HUB, SETTINGS, redis_of
from service.presence import now_ms
from service.protocol import decode_status_body, error_body
from service.redis_conn import REDIS_DOWN

log = logging.getLogger(__name__)

MAX_STATUS_BODY = 8 * 1024
MAX_IMPORT_LINE = 1024
IMPORT_BATCH = 1000
MAX_REPORTED_REJECTS = 10_000
WS_PATH = "/v1/ws"
_PUBLIC = frozenset({"/healthz", "/readyz", "/metrics", WS_PATH})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: BuddycastError, status: int | None = None) -> web.Response:
    """The JSON error body of `error`, with its HTTP status unless `status` is given."""
    metrics.ERRORS.labels(code=error.code).inc()
    return web.Response(
        body=error_body(error.code, error.message),
        status=status or error.http_status,
        content_type="application/json",
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error body; a client's mistake is never a 5xx."""
    try:
        return await handler(request)
    except BuddycastError as exc:
        return error_response(exc)
    except REDIS_DOWN as exc:
        log.warning("redis unavailable: %s", exc)
        return error_response(Unavailable("presence store unavailable: try again"))
    except web.HTTPException as exc:
        if exc.status == 404:
            return error_response(NotFound(f"no route {request.method} {request.path}"))
        if exc.status == 405:
            response = error_response(BadRequest(f"method {request.method} not allowed here"), 405)
            if "Allow" in exc.headers:  # RFC 9110 15.5.6: a 405 names the methods that work
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        if exc.status == 413:
            return error_response(TooLarge("request body too large"))
        if exc.status < 500:
            return error_response(BadRequest(exc.reason), exc.status)
        raise


@web.middleware
def api_middleware(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """The API key check and JSON errors, around every route of the node but `GET /v1/ws`.

    The WebSocket handler answers its own refusals, then runs as long as its session: a
    coroutine around it would live as long, and cost every session its frame.
    """
    if request.method == "GET" and request.path == WS_PATH:
        return handler(request)
    return errors_middleware(request, partial(_require_api_key, handler=handler))


async def _require_api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/v1/") and request.path not in _PUBLIC:
        key = bearer(request.headers.get("Authorization"))
        if not api_key_matches(key, request.app[SETTINGS].api_key or ""):
            raise Unauthorized("missing or wrong API key (Authorization: Bearer <key>)")
    return await handler(request)


def _ids(request: web.Request, *names: str) -> list[str]:
    return [validate_user_id(request.match_info[n], n) for n in names]


async def put_buddy(request: web.Request) -> web.Response:
    owner, buddy = _ids(request, "user", "buddy")
    if owner == buddy:
        raise BadRequest("a user cannot be in their own list")
    settings = request.app[SETTINGS]
    await request.app[DATABASE].add_edge(owner, buddy, settings.max_buddies, now_ms())
    # Even for an existing edge: this repairs a Redis copy an earlier failure left stale;
    # sessions that already list the buddy get no frame.
    await request.app[HUB].store.change_list(owner, added=[buddy])
    return web.Response(status=204)


async def delete_buddy(request: web.Request) -> web.Response:
    owner, buddy = _ids(request, "user", "buddy")
    await request.app[DATABASE].remove_edge(owner, buddy)
    await request.app[HUB].store.change_list(owner, removed=[buddy])
    return web.Response(status=204)


async def get_buddies(request: web.Request) -> web.Response:
    (owner,) = _ids(request, "user")
    buddies = await request.app[DATABASE].get_list(owner)
    items = await request.app[HUB].store.watcher_items(buddies)
    return _json({"items": items})


async def put_friendship(request: web.Request) -> web.Response:
    a, b = _ids(request, "a", "b")
    if a == b:
        raise BadRequest("a user cannot befriend themselves")
    settings = request.app[SETTINGS]
    await request.app[DATABASE].add_friendship(a, b, settings.max_buddies, now_ms())
    store = request.app[HUB].store
    await store.change_list(a, added=[b])
    await store.change_list(b, added=[a])
    return web.Response(status=204)


async def delete_friendship(request: web.Request) -> web.Response:
    a, b = _ids(request, "a", "b")
    await request.app[DATABASE].remove_friendship(a, b)
    store = request.app[HUB].store
    await store.change_list(a, removed=[b])
    await store.change_list(b, removed=[a])
    return web.Response(status=204)


async def get_status(request: web.Request) -> web.Response:
    (user,) = _ids(request, "user")
    (item,) = await request.app[HUB].store.watcher_items([user])
    return _json(item)


async def put_status(request: web.Request) -> web.Response:
    (user,) = _ids(request, "user")
    patch = decode_status_body(await _read_limited(request, MAX_STATUS_BODY))
    status = await request.app[HUB].store.commit_status(user, patch, limited=False)
    metrics.CHANGES_COMMITTED.labels(origin="http").inc()
    return _json(status.own_item())


async def delete_user(request: web.Request) -> web.Response:
    (user,) = _ids(request, "user")
    store = request.app[HUB].store
    gone = await store.delete_user(user)
    owners = await request.app[DATABASE].delete_user(user)
    gone_by_user = {user: gone} if gone else {}
    for start in range(0, len(owners), 500):
        async with redis_of(request.app).pipeline(transaction=False) as pipe:
            for owner in owners[start : start + 500]:
                await store.change_list(owner, removed=[user], gone=gone_by_user, client=pipe)
            await pipe.execute()
    return web.Response(status=204)


async def import_edges(request: web.Request) -> web.Response:
    """Stream NDJSON edges into SQL in batches; report bad lines by number, keep good ones."""
    settings = request.app[SETTINGS]
    db = request.app[DATABASE]
    store = request.app[HUB].store
    imported = 0
    rejected: list[dict[str, Any]] = []
    rejected_count = 0
    batch: list[tuple[int, str, str]] = []

    def reject(line: int, code: str) -> None:
        nonlocal rejected_count
        rejected_count += 1
        if len(rejected) < MAX_REPORTED_REJECTS:
            rejected.append({"line": line, "code": code})

    async def flush() -> None:
        nonlocal imported
        result = await db.import_edges(batch, settings.max_buddies, now_ms())
        imported += len(result.added) + result.present
        for line, code in result.rejected:
            reject(line, code)
        by_owner: dict[str, list[str]] = {}
        for owner, buddy in result.added:
            by_owner.setdefault(owner, []).append(buddy)
        if by_owner:
            async with redis_of(request.app).pipeline(transaction=False) as pipe:
                for owner, buddies in by_owner.items():
                    await store.change_list(owner, added=buddies, client=pipe)
                await pipe.execute()
        batch.clear()

    async for number, line in _lines(request, MAX_IMPORT_LINE):
        if line is None:
            reject(number, "too_large")
            continue
        if not line.strip():
            continue
        try:
            edge = _parse_edge(line)
        except BadRequest:
            reject(number, "bad_request")
            continue
        batch.append((number, *edge))
        if len(batch) >= IMPORT_BATCH:
            await flush()
    if batch:
        await flush()
    rejected.sort(key=lambda r: int(r["line"]))
    body: dict[str, Any] = {"imported": imported, "rejected": rejected}
    if rejected_count > len(rejected):
        body["rejected_total"] = rejected_count
    return _json(body)


def _parse_edge(line: bytes) -> tuple[str, str]:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("not JSON") from exc
    if not isinstance(record, dict) or set(record) != {"user", "buddy"}:
        raise BadRequest("expected {user, buddy}")
    user = validate_user_id(record["user"])
    buddy = validate_user_id(record["buddy"])
    if user == buddy:
        raise BadRequest("self edge")
    return user, buddy


async def _lines(request: web.Request, max_line: int) -> AsyncIterator[tuple[int, bytes | None]]:
    """Physical lines of the body with 1-based numbers; None for a line over `max_line`."""
    number = 0
    buffer = bytearray()
    oversized = False
    async for chunk in request.content.iter_chunked(64 * 1024):
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                if not oversized:
                    buffer += chunk[start:]
                    if len(buffer) > max_line + 1:
                        oversized, buffer = True, bytearray()
                break
            number += 1
            if oversized:
                yield number, None
            else:
                buffer += chunk[start:end]
                line = bytes(buffer).removesuffix(b"\r")
                yield number, (None if len(line) > max_line else line)
            buffer, oversized = bytearray(), False
            start = end + 1
    if buffer or oversized:
        number += 1
        line = bytes(buffer).removesuffix(b"\r")
        yield number, (None if oversized or len(line) > max_line else line)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"body must be at most {limit} bytes")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise TooLarge(f"body must be at most {limit} bytes")
    return body


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        await redis_of(request.app).ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"down: {type(exc).__name__}"
    try:
        await request.app[DATABASE].ping()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"down: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return _json(
        {"status": "ok" if ready else "unavailable", "checks": checks}, 200 if ready else 503
    )


async def metrics_endpoint(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


async def openapi(request: web.Request) -> web.Response:
    document = files("service").joinpath("openapi.yaml").read_bytes()
    return web.Response(body=document, content_type="application/yaml")


def add_routes(app: web.Application) -> None:
    # `[^/]+` rather than aiohttp's default `[^{}/]+`: an id with a brace is a 400, not a 404.
    app.router.add_put("/v1/users/{user:[^/]+}/buddies/{buddy:[^/]+}", put_buddy)
    app.router.add_delete("/v1/users/{user:[^/]+}/buddies/{buddy:[^/]+}", delete_buddy)
    app.router.add_get("/v1/users/{user:[^/]+}/buddies", get_buddies, allow_head=False)
    app.router.add_put("/v1/friendships/{a:[^/]+}/{b:[^/]+}", put_friendship)
    app.router.add_delete("/v1/friendships/{a:[^/]+}/{b:[^/]+}", delete_friendship)
    app.router.add_get("/v1/users/{user:[^/]+}/status", get_status, allow_head=False)
    app.router.add_put("/v1/users/{user:[^/]+}/status", put_status)
    app.router.add_delete("/v1/users/{user:[^/]+}", delete_user)
    app.router.add_post("/v1/import", import_edges)
    app.router.add_get("/v1/openapi.yaml", openapi, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/metrics", metrics_endpoint, allow_head=False)
