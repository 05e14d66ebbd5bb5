"""The Lua scripts, read from their files once and registered on a Redis client."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

NAMES = (
    "set_status",
    "hydrate",
    "session_open",
    "session_close",
    "offline_due",
    "list_change",
    "load_list",
    "delete_user",
)


@cache
def source(name: str) -> str:
    return (Path(__file__).parent / f"{name}.lua").read_text()


class Scripts:
    """Every script registered on one client; call as `await scripts.set_status(keys, args)`."""

    def __init__(self, client: Any) -> None:
        for name in NAMES:
            setattr(self, name, client.register_script(source(name)))

    set_status: Any
    hydrate: Any
    session_open: Any
    session_close: Any
    offline_due: Any
    list_change: Any
    load_list: Any
    delete_user: Any
