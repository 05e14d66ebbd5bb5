"""One WebSocket session: its list, and a bounded outbox drained by a writer task.

The fan-out path never awaits a socket: it writes a frame whole to an idle socket, or
drops the item into the outbox, where a newer item of a subject replaces an unsent older
one. A writer task runs only while the outbox holds something: most sessions are idle
most of the time, and an idle session should cost no task, no event and no frame.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import WSMsgType, web

from service import metrics
from service.protocol import (
    FRAMED_STATUS_ITEM_END,
    WEBSOCKET_PING_FRAME,
    framed_status,
    framed_status_item_start,
    status_frame,
    websocket_text_frame,
)
from service.tasks import cancel_and_wait

MAX_CONTROL_BYTES = 1 << 20
"""Queued non-status frames (acks, list frames) beyond this mean the client is not reading."""
DIRECT_WRITE_LIMIT = 64 * 1024
"""A socket with this many bytes unsent gets status items through the writer, coalesced."""
NOTHING_HELD: frozenset[str] = frozenset()
"""Shared by every session with no subject held: each `frozenset()` is a new 216 bytes."""


class CachedItem:
    """A subject's latest item on this node, encoded once, and the life it belongs to."""

    __slots__ = ("item_start", "life", "updated_at", "version", "wire")

    def __init__(self, item: dict[str, Any], data: bytes, life: int) -> None:
        self.life = life
        self.version: int = item["version"]
        self.updated_at: int = item["updated_at"]
        # Only the framed item is kept: the latest item of every watched subject is held
        # on the node, and a second copy would cost it 140-160 bytes a subject.
        self.wire = framed_status(data)
        self.item_start = framed_status_item_start(self.wire)

    @property
    def data(self) -> bytes:
        """The item's JSON, copied out of its frame. A snapshot takes one per subject, so
        the item's offset is kept: finding it again and viewing it cost three times as much
        as the copy (docs/benchmarks.md)."""
        return self.wire[self.item_start : FRAMED_STATUS_ITEM_END]


class Session:
    __slots__ = (
        "_list_lock",
        "buddies",
        "closed",
        "control",
        "control_bytes",
        "errors",
        "heard_at",
        "held",
        "id",
        "list_backlog",
        "loading",
        "pending",
        "pinged_at",
        "ready",
        "requests",
        "sending_since",
        "transport",
        "user",
        "writer",
        "ws",
    )

    def __init__(self, session_id: str, user: str, ws: web.WebSocketResponse) -> None:
        self.id = session_id
        self.user = user
        self.ws = ws
        # Sorted, the snapshot's order: a fifth of a set's memory, and lists are read whole.
        self.buddies: tuple[str, ...] = ()
        self.pending: dict[str, CachedItem] = {}
        # Subjects being added to the list: no status of them may precede the list frame.
        self.held = NOTHING_HELD
        # Frames in order; the writer takes the whole list at a time (an empty list costs a
        # tenth of an empty deque, and most sessions' outboxes are empty).
        self.control: list[bytes] = []
        self.control_bytes = 0
        self.ready = False
        self.loading = True
        self.closed = False
        self.list_backlog: list[Any] = []
        self._list_lock: asyncio.Lock | None = None  # made on the first list edit
        self.sending_since: float | None = None
        self.writer: asyncio.Task[None] | None = None  # while the outbox holds something
        self.transport: asyncio.Transport | None = None  # once upgraded
        # Monotonic times: the client's last frame of any kind, and our last ping.
        self.heard_at = self.pinged_at = time.monotonic()
        self.requests = 0  # frames handled, for the request ids of status changes
        self.errors: Sequence[float] = ()  # times of recent bad frames

    @property
    def list_lock(self) -> asyncio.Lock:
        """Held while a list edit or a resync changes what the session watches."""
        if self._list_lock is None:
            self._list_lock = asyncio.Lock()
        return self._list_lock

    def push_status(self, subject: str, cached: CachedItem) -> bool:
        """Write `subject`'s latest item now if nothing waits before it and the socket keeps
        up, else queue it, replacing an unsent older one. True when written now."""
        if subject in self.held:
            return False
        transport = self._idle_transport()
        if transport is not None:
            transport.write(cached.wire)
            return True
        if subject in self.pending:
            metrics.OUTBOX_COALESCED.inc()
        self.pending[subject] = cached
        if self.ready:
            self._start_writer()
        return False

    def _idle_transport(self) -> asyncio.Transport | None:
        """The transport, if a frame may go to it now: the session is live, its writer idle
        with nothing queued, and the socket keeps up. A frame written whole then cannot
        overtake another, so the order of frames holds."""
        transport = self.transport
        if (
            transport is not None
            and self.ready
            and not self.pending
            and not self.control
            and self.sending_since is None
            and not self.closed
            and not self.ws.closed
            and not transport.is_closing()
            and transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT
        ):
            return transport
        return None

    def ping(self, now: float) -> None:
        """Send a WebSocket ping; a frame on its own, it may go between any two others."""
        self.pinged_at = now
        transport = self.transport
        if transport is not None and not self.closed and not transport.is_closing():
            transport.write(WEBSOCKET_PING_FRAME)

    def push_control(self, frame: bytes) -> bool:
        """Queue a frame after every status queued before it; False when over the bound."""
        if self.pending and self.ready:
            self._flush_pending_to_control()
        self.control.append(frame)
        self.control_bytes += len(frame)
        if self.ready:
            self._start_writer()
        return self.control_bytes <= MAX_CONTROL_BYTES

    def start(self, *frames: bytes) -> None:
        """Send `frames` (the hello, the snapshot) ahead of everything queued, and go live."""
        # Every pending item is at or below the snapshot's versions: drop them.
        self.pending.clear()
        self.ready = True
        transport = self._idle_transport()
        if transport is not None:
            # One write, and no writer task: most sessions never need one.
            transport.write(b"".join(map(websocket_text_frame, frames)))
            return
        self.control[0:0] = frames
        self.control_bytes += sum(map(len, frames))
        self._start_writer()

    def _start_writer(self) -> None:
        if not self.closed and (self.writer is None or self.writer.done()):
            self.writer = asyncio.create_task(self._write_loop())

    def _flush_pending_to_control(self) -> None:
        frame = self._take_pending()
        self.control.append(frame)
        self.control_bytes += len(frame)

    def _take_pending(self) -> bytes:
        items = self.pending
        self.pending = {}
        frame = status_frame(c.data for c in items.values())
        now = time.time()
        for cached in items.values():
            metrics.PROPAGATION.observe(max(0.0, now - cached.updated_at / 1000))
        metrics.DELIVERIES.inc(len(items))
        return frame

    async def _write_loop(self) -> None:
        """Send what is queued, in order, then end: the next push starts a new writer."""
        try:
            while not self.closed and (self.control or self.pending):
                # Frames queued meanwhile go to a new list, after these.
                counted = bool(self.control)  # control_bytes counts control frames only
                frames = self.control if counted else [self._take_pending()]
                self.control = []
                for frame in frames:
                    if counted:
                        self.control_bytes -= len(frame)
                    self.sending_since = time.monotonic()
                    try:
                        await self.ws.send_frame(frame, WSMsgType.TEXT)
                    except (ConnectionError, RuntimeError):
                        self.closed = True
                        return
                    finally:
                        self.sending_since = None
        finally:
            if self.writer is asyncio.current_task():
                self.writer = None

    async def drain(self, timeout_s: float) -> None:
        """Wait until everything queued is written, at most `timeout_s`."""
        writer = self.writer
        if not self.ready or self.closed or writer is None or writer.done():
            return
        await asyncio.wait((writer,), timeout=timeout_s)

    def stalled_for(self, now: float) -> float:
        """Seconds the writer has been stuck on one send (0 when it is not)."""
        return 0.0 if self.sending_since is None else now - self.sending_since

    async def stop_writer(self) -> None:
        self.closed = True
        if self.writer is not None and self.writer is not asyncio.current_task():
            await cancel_and_wait([self.writer], timeout_s=1.0)
