"""Handoffs: each call's latest transfer and its result, and the department a message is for.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("calls", sa.Column("transfer_department", sa.String(32)))
    op.add_column("calls", sa.Column("transfer_result", sa.String(16)))
    op.add_column("messages", sa.Column("department", sa.String(32)))


def downgrade() -> None:
    op.drop_column("messages", "department")
    op.drop_column("calls", "transfer_result")
    op.drop_column("calls", "transfer_department")
