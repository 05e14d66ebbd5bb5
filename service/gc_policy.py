"""How server processes use Python's cyclic garbage collector.

A node holds millions of long-lived objects (sessions, their lists, aiohttp's state for
each connection), and a full collection walks them all while every socket of the node
waits: a standard benchmark saw 16 full collections of 340 ms on average on one node.
After each full collection its survivors are frozen (out of the collector's sight), so
the next walks only what is newer. A frozen object that later becomes garbage inside a
reference cycle is not freed that way, so every `THAW_S` the freeze is lifted and the
next full collection walks everything once.
"""

from __future__ import annotations

import gc
import time
from typing import Any

THAW_S = 300.0


def install() -> None:
    """Freeze the survivors of each full collection; lift the freeze every `THAW_S`."""
    thawed_at = time.monotonic()

    def after_collection(phase: str, info: dict[str, Any]) -> None:
        nonlocal thawed_at
        if phase != "stop" or info["generation"] != 2:
            return
        now = time.monotonic()
        if now - thawed_at >= THAW_S:
            gc.unfreeze()
            thawed_at = now
        else:
            gc.freeze()

    gc.callbacks.append(after_collection)
