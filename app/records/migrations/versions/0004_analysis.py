"""What the caller lookup answered about each call, and each call's post-call analysis.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "caller_lookups",
        sa.Column("call_sid", sa.String(64), primary_key=True),
        sa.Column("looked_up_at", Time, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("data", sa.JSON),
    )
    op.create_index("caller_lookups_at", "caller_lookups", ["looked_up_at"])
    op.create_table(
        "analyses",
        sa.Column("call_sid", sa.String(64), primary_key=True),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("not_before", Time, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_until", Time),
        sa.Column("lease_token", sa.String(32)),
        sa.Column("method", sa.String(8)),
        sa.Column("summary", sa.Text),
        sa.Column("intent", sa.String(32)),
        sa.Column("need_met", sa.String(16)),
        sa.Column("fields", sa.JSON),
        sa.Column("empty_fields", sa.JSON),
        sa.Column("error", sa.String(200)),
        sa.Column("done_at", Time),
    )
    op.create_index("analyses_due", "analyses", ["state", "not_before"])
    op.create_index("analyses_intent", "analyses", ["intent"])
    op.create_index("analyses_need_met", "analyses", ["need_met"])
    op.create_index("analyses_created", "analyses", ["created_at"])


def downgrade() -> None:
    op.drop_table("analyses")
    op.drop_table("caller_lookups")
