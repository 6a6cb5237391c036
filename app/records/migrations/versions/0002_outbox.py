"""The outbox: events for webhooks and e-mail, delivered in order per destination.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(40), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("destination", sa.String(1100), nullable=False),
        sa.Column("call_sid", sa.String(64)),
        sa.Column("data", sa.JSON),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", Time, nullable=False),
        sa.Column("retry_until", Time, nullable=False),
        sa.Column("lease_until", Time),
        sa.Column("lease_token", sa.String(32)),
        sa.Column("last_error", sa.String(200)),
        sa.Column("done_at", Time),
    )
    op.create_index("outbox_event_destination", "outbox", ["event_id", "destination"], unique=True)
    op.create_index("outbox_destination_state", "outbox", ["destination", "state", "id"])
    op.create_index("outbox_state", "outbox", ["state", "id"])


def downgrade() -> None:
    op.drop_table("outbox")
