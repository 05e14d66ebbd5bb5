"""Initial schema: statuses and buddy-list edges.

Revision ID: 0001
Revises:
Create Date: 2025-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "statuses",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("presence", sa.String(length=16), nullable=False),
        sa.Column("text", sa.Text(), server_default="", nullable=False),
        sa.Column("avatar", sa.Text(), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_statuses")),
    )
    op.create_table(
        "edges",
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("buddy", sa.String(length=64), nullable=False),
        sa.Column("utime", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "buddy", name=op.f("pk_edges")),
    )
    op.create_index(op.f("ix_edges_buddy"), "edges", ["buddy"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_edges_buddy"), table_name="edges")
    op.drop_table("edges")
    op.drop_table("statuses")
