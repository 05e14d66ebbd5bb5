"""`GET /v1/ws`: authentication before the upgrade, then the session's frame loop."""

from __future__ import annotations

import logging
import time
from urllib.parse import parse_qs

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from service import metrics
from service.auth import bearer, verify_token
from service.errors import BadRequest, RateLimited, TooLarge, Unauthorized, Unavailable
from service.node.context import HUB, SETTINGS, ip_limiter
from service.node.http_api import error_response
from service.node.hub import Hub
from service.node.session import Session
from service.protocol import (
    MAX_CLIENT_FRAME_BYTES,
    ClientFrame,
    FrameError,
    ack_frame,
    decode_client_frame,
    error_frame,
    hello_frame,
    pong_frame,
)
from service.redis_conn import REDIS_DOWN

log = logging.getLogger(__name__)

UNAVAILABLE: tuple[type[Exception], ...] = (*REDIS_DOWN, Unavailable)
HARD_FRAME_LIMIT = 64 * 1024
ABUSE_LIMIT = 20
ABUSE_WINDOW_S = 10.0
_ENDED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    hub = request.app[HUB]
    if hub.draining:
        return error_response(Unavailable("node is restarting: connect again"))
    origin = request.headers.get("Origin")
    if settings.allowed_origins and origin and origin.rstrip("/") not in settings.allowed_origins:
        return error_response(Unauthorized("origin not allowed"), 403)
    if not ip_limiter(request.app).allow(_peer_host(request)):
        return error_response(RateLimited("too many connections from this address"))
    token = _query_token(request) or bearer(request.headers.get("Authorization"))
    if not token:
        return error_response(Unauthorized("missing token: pass ?token= or Authorization: Bearer"))
    try:
        user = verify_token(token, settings.jwt_secret or "")
    except Unauthorized as exc:
        return error_response(exc)

    # Pings are the hub's (`Hub._liveness_loop`): aiohttp's heartbeat costs a timer and a
    # task per session and ping. Pongs and client pings come to the frame loop.
    ws = web.WebSocketResponse(
        autoping=False,
        compress=False,
        # aiohttp refuses a message of max_msg_size bytes or more, closing at once; up to
        # HARD_FRAME_LIMIT we check the size ourselves, so earlier replies are flushed
        # before the 1009.
        max_msg_size=HARD_FRAME_LIMIT,
        writer_limit=64 * 1024,
        decode_text=False,
    )
    session = Session(hub.new_session_id(), user, ws)
    # The session is registered (and counted against the cap) before the upgrade, in
    # one script, so concurrent connects cannot pass BUDDYCAST_MAX_SESSIONS_PER_USER.
    try:
        admitted = await hub.store.open_session(
            user, session.id, hub.node, settings.max_sessions_per_user
        )
    except UNAVAILABLE:
        return error_response(Unavailable("presence store unavailable: try again"))
    if not admitted:
        return error_response(RateLimited("too many sessions for this user"))
    try:
        try:
            await ws.prepare(request)
        except web.HTTPException as exc:  # not a WebSocket upgrade request
            return error_response(BadRequest(exc.reason), exc.status)
        session.transport = request.transport
        hello = hello_frame(user, session.id, hub.node, settings.heartbeat_s)
        try:
            # The hello goes out with the snapshot, in one write.
            await hub.open(session, hello)
        except UNAVAILABLE as exc:
            log.warning("session could not open: %s", exc)
            if not session.ready:
                await ws.send_frame(hello, WSMsgType.TEXT)
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"unavailable: try again")
            return ws
        # The frame loop is inline: a coroutine awaited here would live as long as the
        # session, and its frame would cost every session a few hundred bytes.
        while True:
            message = await ws.receive()
            if message.type in _ENDED or not await _answer(hub, session, ws, message):
                break
    finally:
        await hub.close(session)
        metrics.DISCONNECTS.labels(code=str(ws.close_code or 1006)).inc()
    return ws


# A request lives as long as its session: `request.remote` and `request.query` would keep
# what they parse in a cache in every request, for a few hundred bytes a session.


def _peer_host(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if isinstance(peer, (list, tuple)) else str(peer or "?")


def _query_token(request: web.Request) -> str | None:
    given = parse_qs(request.raw_path.partition("?")[2]).get("token")
    return given[0] if given else None


async def _close_after_replies(
    session: Session, ws: web.WebSocketResponse, code: int, reason: bytes
) -> None:
    """Let the replies already queued go out (briefly), then close."""
    await session.drain(timeout_s=1.0)
    await ws.close(code=code, message=reason)


async def _answer(
    hub: Hub, session: Session, ws: web.WebSocketResponse, message: WSMessage
) -> bool:
    """Handle one client message; False when the session is to end."""
    session.heard_at = time.monotonic()
    if message.type == WSMsgType.PING:
        await ws.pong(message.data)
        return True
    if message.type == WSMsgType.PONG:
        return True
    if message.type == WSMsgType.ERROR:
        failure = ws.exception()
        if failure is not None and "too big" in str(failure).lower():
            metrics.ERRORS.labels(code=TooLarge.code).inc()
        return False
    if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
        return True
    if len(message.data) > MAX_CLIENT_FRAME_BYTES:
        metrics.ERRORS.labels(code=TooLarge.code).inc()
        await _close_after_replies(
            session, ws, WSCloseCode.MESSAGE_TOO_BIG, b"frame over 8192 bytes"
        )
        return False
    error: str | None = None  # the code of a refused frame
    reply: bytes | None
    if message.type == WSMsgType.BINARY:
        error = "bad_request"
        reply = error_frame(None, error, "binary frames are not accepted")
    else:
        try:
            frame = decode_client_frame(message.data)
            session.requests += 1
            reply = await _handle(hub, session, frame, f"{session.id}:{session.requests}")
        except FrameError as exc:
            error = exc.code
            reply = error_frame(exc.ref, exc.code, exc.message)
    if reply is not None and not session.push_control(reply):
        await hub.close_slow(session)
        return False
    if error is not None:
        metrics.ERRORS.labels(code=error).inc()
        if _abusive(session):
            await _close_after_replies(
                session, ws, WSCloseCode.POLICY_VIOLATION, b"too many errors"
            )
            return False
    return True


def _abusive(session: Session) -> bool:
    """Record an error; True when more than ABUSE_LIMIT fell within ABUSE_WINDOW_S."""
    now = time.monotonic()
    # Never more than ABUSE_LIMIT + 1 kept: the session closes beyond.
    recent = [t for t in session.errors if t >= now - ABUSE_WINDOW_S]
    recent.append(now)
    session.errors = recent
    return len(recent) > ABUSE_LIMIT


async def _handle(hub: Hub, session: Session, frame: ClientFrame, request_id: str) -> bytes | None:
    if frame.op == "ping":
        return pong_frame(frame.ref)
    if frame.op == "resync":
        try:
            await hub.resync(session)
        except UNAVAILABLE:
            return error_frame(frame.ref, "unavailable", "presence store unavailable: try again")
        return None
    if frame.patch is None:  # only set_status carries a patch
        return error_frame(frame.ref, "internal", "unexpected frame")
    try:
        status = await hub.store.commit_status(
            session.user,
            frame.patch,
            limited=True,
            request_id=request_id,
            session=(session.id, hub.node),
        )
    except (RateLimited, Unavailable) as exc:
        metrics.ERRORS.labels(code=exc.code).inc()
        return error_frame(frame.ref, exc.code, exc.message)
    except REDIS_DOWN:
        metrics.ERRORS.labels(code="unavailable").inc()
        return error_frame(frame.ref, "unavailable", "presence store unavailable: try again")
    metrics.CHANGES_COMMITTED.labels(origin="ws").inc()
    return ack_frame(frame.ref, status.own_item())
