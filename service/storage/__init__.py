"""SQL storage: the `Database` queries and `migrate`, which brings a schema to head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection

from service.storage.database import (
    Database,
    ImportResult,
    make_engine,
    unavailable_on_failure,
)

__all__ = ["Database", "ImportResult", "alembic_config", "migrate"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# A bigint outside the int4 range of hashtext(), so it never collides with an owner's lock.
_MIGRATION_LOCK_KEY = 0x6275646479636173  # "buddycas"


def alembic_config() -> Config:
    """An alembic `Config` for the bundled migrations, independent of the working directory."""
    config = Config()
    # configparser interpolates '%', which a path may contain.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    return config


async def migrate(url: str) -> None:
    """Upgrade the database at `url` to the latest schema; a no-op when it is already there."""
    engine = make_engine(url)
    try:
        async with unavailable_on_failure(), engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Two processes migrating at once would both try to create the tables.
                # (On SQLite the transaction's BEGIN IMMEDIATE already serializes them.)
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            await connection.run_sync(_upgrade_to_head)
    finally:
        await engine.dispose()


def _upgrade_to_head(connection: Connection) -> None:
    config = alembic_config()
    # env.py runs on this connection instead of opening its own.
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
