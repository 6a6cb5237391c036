"""Call-backs: each message's scheduled call-back and its tries, the do-not-call list, and calls
marked inbound or outbound (an outbound one linked to its message).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("calls", sa.Column("direction", sa.String(8), nullable=False, server_default="inbound"))
    op.add_column("calls", sa.Column("message_id", _ID))
    op.create_table(
        "callbacks",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("message_id", _ID, sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
        sa.Column("number", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("requested_at", _UTC, nullable=False),
        sa.Column("not_before", _UTC, nullable=False),
        sa.Column("due_at", _UTC),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_result", sa.String(16)),
        sa.Column("detail", sa.String(200)),
        sa.Column("call_sid", sa.String(64)),
        sa.Column("lease_until", _UTC),
        sa.Column("lease_token", sa.String(32)),
        sa.Column("placed_at", _UTC),
        sa.Column("done_at", _UTC),
        sa.Index("callbacks_message", "message_id", unique=True),
        sa.Index("callbacks_state_due", "state", "due_at"),
        sa.Index("callbacks_number", "number"),
    )
    op.create_table(
        "do_not_call",
        sa.Column("number", sa.String(32), primary_key=True),
        sa.Column("added_at", _UTC, nullable=False),
        sa.Column("source", sa.String(80), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("do_not_call")
    op.drop_table("callbacks")
    op.drop_column("calls", "message_id")
    op.drop_column("calls", "direction")
