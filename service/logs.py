"""Logging set-up: plain text, or one JSON object a line."""

from __future__ import annotations

import logging
import re
import sys

import orjson

# A JWT anywhere, and whatever follows `token=` or `Bearer `: a malformed request line
# or header is logged by aiohttp itself, token and all.
_SECRETS = re.compile(
    r"eyJ[\w-]*\.[\w-]*\.[\w-]*|(?<=token=)[^&\s\"']+|(?<=Bearer )[^\s\"']+", re.I
)


def redact(text: str) -> str:
    """`text` with tokens and bearer credentials replaced."""
    return _SECRETS.sub("[redacted]", text)


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


def configure(level: str, fmt: str) -> None:
    """Send logs to stderr in `fmt` ("plain" or "json") at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would record tokens passed as ?token=, and the database
    # drivers log query parameters (status texts) at debug: they never go below WARNING.
    for noisy in ("aiohttp.access", "aiosqlite", "asyncpg", "sqlalchemy", "redis", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
