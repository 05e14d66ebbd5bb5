"""The Lua scripts, read from their files once and registered on a Redis client.

A direct call runs EVALSHA (loading the script on NOSCRIPT). A call queued on a
pipeline sends EVAL with the source: cluster pipelines refuse EVALSHA, and a replica
promoted by a failover may never have loaded the script.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

NAMES = (
    "set_status",
    "hydrate",
    "read_each",
    "interest",
    "session_open",
    "session_close",
    "offline_due",
    "list_change",
    "load_list",
    "delete_user",
    "dead_letter",
)


@cache
def source(name: str) -> str:
    return (Path(__file__).parent / f"{name}.lua").read_text()


class LuaScript:
    """One script; `await script(keys, args)` or `await script(keys, args, client=pipe)`."""

    def __init__(self, client: Any, name: str) -> None:
        self.name = name
        self.source = source(name)
        self._registered = client.register_script(self.source)

    async def __call__(self, keys: Sequence[str], args: Sequence[Any], client: Any = None) -> Any:
        if client is None:
            return await self._registered(keys=keys, args=args)
        client.eval(self.source, len(keys), *keys, *args)
        return None


class Scripts:
    """Every script registered on one client."""

    def __init__(self, client: Any) -> None:
        for name in NAMES:
            setattr(self, name, LuaScript(client, name))

    set_status: LuaScript
    hydrate: LuaScript
    read_each: LuaScript
    interest: LuaScript
    session_open: LuaScript
    session_close: LuaScript
    offline_due: LuaScript
    list_change: LuaScript
    load_list: LuaScript
    delete_user: LuaScript
    dead_letter: LuaScript
