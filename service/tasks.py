"""Stopping background tasks within a deadline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], timeout_s: float = 3.0) -> None:
    """Cancel `tasks` and wait for them at most `timeout_s`; never hang a shutdown.

    A library that swallows a CancelledError (seen inside redis-py pipeline clean-up)
    would otherwise keep a task alive forever; such tasks are cancelled again, then left.
    """
    pending = {t for t in tasks if not t.done()}
    for wait_s in (timeout_s, 1.0):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=wait_s)
    if pending:
        names = ", ".join(t.get_name() for t in pending)
        log.warning("tasks still running after cancellation: %s", names)
