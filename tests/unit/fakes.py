"""Stand-ins for the I/O edges of a node, for tests without sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import WSMsgType


class FakeWS:
    """Records every frame; `gate` (when set) holds each send until it is opened."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.opcodes: list[WSMsgType] = []
        self.gate: asyncio.Event | None = None
        self.fail: BaseException | None = None
        self.closed = False

    async def send_frame(self, data: bytes, opcode: WSMsgType) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.frames.append(data)
        self.opcodes.append(opcode)

    def decoded(self) -> list[Any]:
        return [orjson.loads(f) for f in self.frames]


class FakeTransport:
    """Records each write whole, as a socket's transport would take it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.buffered = 0  # what `get_write_buffer_size` reports

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.buffered
