"""Every setting of buddycast: read from the environment and `.env`, validated once."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values

ENV_PREFIX = "BUDDYCAST_"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./buddycast.db"

T = TypeVar("T")


class SettingsError(Exception):
    """A setting is missing or malformed; the message names it in one line."""


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be true or false")


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _port(text: str, what: str) -> None:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{what} port {text!r} is not a number from 1 to 65535")


def _redis_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"redis", "rediss", "unix", "redis+cluster", "rediss+cluster"}:
        raise ValueError("must start with redis://, rediss://, unix:// or redis+cluster://")
    if parts.scheme != "unix" and not parts.netloc:
        raise ValueError("needs a host, as in redis://127.0.0.1:6379/0")
    if parts.scheme.endswith("+cluster"):
        for seed in parts.netloc.rsplit("@", 1)[-1].split(","):
            host, _, port = seed.rpartition(":")
            if not host:
                raise ValueError(f"cluster seed {seed!r} is not host:port")
            _port(port, "cluster seed")
    elif parts.scheme != "unix":
        port = parts.netloc.rsplit("@", 1)[-1].rpartition(":")[2] if ":" in parts.netloc else ""
        if port and not parts.netloc.endswith("]"):
            _port(port, "redis")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError(f"database {db!r} must be a number, as in redis://host:6379/0")
    return raw


def _database_url(raw: str) -> str:
    scheme = urlsplit(raw).scheme
    if scheme not in {"sqlite+aiosqlite", "postgresql+asyncpg", "postgresql", "postgres"}:
        raise ValueError("must be sqlite+aiosqlite:///FILE or postgresql+asyncpg://...")
    if raw.startswith("sqlite+aiosqlite") and raw.rstrip("/").endswith(("memory:", "aiosqlite:")):
        raise ValueError("SQLite needs a file: in-memory databases cannot be shared")
    if not raw.startswith("sqlite"):
        netloc = urlsplit(raw).netloc.rsplit("@", 1)[-1]
        if ":" in netloc and not netloc.endswith("]"):
            _port(netloc.rpartition(":")[2], "database")
    if scheme in {"postgresql", "postgres"}:
        return "postgresql+asyncpg://" + raw.split("://", 1)[1]
    return raw


def _secret(minimum: int) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if len(raw.encode()) < minimum:
            raise ValueError(f"must be at least {minimum} bytes")
        return raw

    return parse


def _origins(raw: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated configuration; build it with `Settings.from_env()`."""

    redis_url: str | None = None
    database_url: str = DEFAULT_DATABASE_URL
    jwt_secret: str | None = None
    api_key: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    shards: int = 16
    max_buddies: int = 1000
    offline_grace_s: float = 5.0
    node_ttl_s: float = 10.0
    heartbeat_s: float = 20.0
    node_id: str = ""
    metrics_port: int = 9091
    max_sessions_per_user: int = 16
    allowed_origins: tuple[str, ...] = ()
    connect_rate_per_ip: float = 50.0
    slow_client_s: float = 10.0
    stream_maxlen: int = 200_000
    inbox_maxlen: int = 20_000
    max_deliveries: int = 10
    claim_idle_s: float = 15.0
    reuse_port: bool = False
    log_level: str = "info"
    log_format: str = "plain"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, dotenv_path: str | Path | None = ".env"
    ) -> Settings:
        """Read `BUDDYCAST_*` from `.env` and the environment (the environment wins)."""
        merged: dict[str, str] = {}
        if dotenv_path is not None and Path(dotenv_path).is_file():
            merged.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
        merged.update(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            raw = merged.get(name)
            if raw is None or (raw.strip() == "" and f.name in _BLANK_IS_UNSET):
                continue
            try:
                values[f.name] = _PARSERS[f.name](raw)
            except ValueError as exc:
                shown = "(hidden)" if f.name in _SECRET else repr(raw)
                raise SettingsError(f"{name}={shown} is invalid: {exc}") from None
        settings = cls(**values)
        if not settings.node_id:
            settings = cls(**{**values, "node_id": default_node_id()})
        return settings

    def require(self, *names: str) -> None:
        """Stop with one clear line when a setting a role needs is unset."""
        for name in names:
            if getattr(self, name) in (None, ""):
                raise SettingsError(f"{ENV_PREFIX}{name.upper()} is required but not set")

    @property
    def redis_is_cluster(self) -> bool:
        return bool(self.redis_url) and urlsplit(self.redis_url or "").scheme.endswith("+cluster")

    @property
    def database_is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def default_node_id() -> str:
    """A node id unique per process: host, pid and a random suffix."""
    host = socket.gethostname().split(".")[0][:24] or "node"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


_SECRET = {"jwt_secret", "api_key", "database_url", "redis_url"}
_BLANK_IS_UNSET = {"redis_url", "jwt_secret", "api_key", "node_id", "allowed_origins"}

_PARSERS: dict[str, Callable[[str], Any]] = {
    "redis_url": _redis_url,
    "database_url": _database_url,
    # HS256 wants a key as long as its hash (RFC 7518 section 3.2).
    "jwt_secret": _secret(32),
    "api_key": _secret(16),
    "host": _text,
    "port": _int(0, 65535),
    "shards": _int(1, 16384),
    "max_buddies": _int(1, 100_000),
    "offline_grace_s": _float(0, 3600),
    "node_ttl_s": _float(1, 3600),
    "heartbeat_s": _float(0.5, 3600),
    "node_id": _text,
    "metrics_port": _int(0, 65535),
    "max_sessions_per_user": _int(1, 10_000),
    "allowed_origins": _origins,
    "connect_rate_per_ip": _float(0.1, 1_000_000),
    "slow_client_s": _float(0.1, 3600),
    "stream_maxlen": _int(1000, 100_000_000),
    "inbox_maxlen": _int(100, 100_000_000),
    "max_deliveries": _int(1, 1000),
    "claim_idle_s": _float(0.1, 3600),
    "reuse_port": _bool,
    "log_level": _choice("debug", "info", "warning", "error"),
    "log_format": _choice("plain", "json"),
}
