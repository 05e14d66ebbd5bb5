"""Alembic environment: runs on the connection `migrate` hands over, or on a URL (CLI)."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from service.storage.database import make_engine
from service.storage.models import Base

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    """`-x url=...`, else `sqlalchemy.url` from alembic.ini, else buddycast's settings."""
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from service.config import Settings

    return Settings.from_env().database_url


def _run_on(connection: Connection) -> None:
    # Batch mode: SQLite cannot ALTER most things, so alembic copies the table instead.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_on_url(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run_on)
    finally:
        await engine.dispose()


def _run_offline(url: str) -> None:
    context.configure(
        url=url,
        target_metadata=target_metadata,
        render_as_batch=True,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    handed_over = config.attributes.get("connection")
    if isinstance(handed_over, Connection):
        # Called from `migrate`: logging is the application's business, not alembic.ini's.
        _run_on(handed_over)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    if context.is_offline_mode():
        _run_offline(_database_url())
    else:
        asyncio.run(_run_on_url(_database_url()))


_main()
