"""Calls, turns, the passages they read, knowledge gaps and messages.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("call_sid", sa.String(64), nullable=False, unique=True),
        sa.Column("conversation_id", sa.String(128)),
        sa.Column("caller", sa.String(32)),
        sa.Column("started_at", Time),
        sa.Column("answered_at", Time),
        sa.Column("ended_at", Time),
        sa.Column("duration_s", sa.Float),
        sa.Column("end_reason", sa.String(32)),
        sa.Column("end_detail", sa.String(64)),
        sa.Column("transferred_to", sa.String(32)),
        sa.Column("turns", sa.Integer, nullable=False, server_default="0"),
        sa.Column("messages", sa.Integer, nullable=False, server_default="0"),
        sa.Column("unanswered", sa.Integer, nullable=False, server_default="0"),
        sa.Column("greeting", sa.Text),
        sa.Column(
            "outcome",
            sa.String(16),
            sa.Computed(
                "CASE WHEN transferred_to IS NOT NULL THEN 'transferred'"
                " WHEN messages > 0 THEN 'message'"
                " WHEN end_reason = 'fallback' THEN 'fallback'"
                " WHEN unanswered > 0 THEN 'unanswered'"
                " WHEN end_reason = 'busy' THEN 'busy'"
                " ELSE 'answered' END",
                persisted=True,
            ),
        ),
    )
    op.create_index("calls_started", "calls", ["started_at", "id"])
    op.create_index("calls_outcome_started", "calls", ["outcome", "started_at", "id"])
    op.create_index("calls_conversation", "calls", ["conversation_id"])

    op.create_table(
        "gaps",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("example", sa.Text, nullable=False),
        sa.Column("count", sa.Integer, nullable=False, server_default="1"),
        sa.Column("first_asked_at", Time, nullable=False),
        sa.Column("last_asked_at", Time, nullable=False),
        sa.Column("handled_at", Time),
        sa.Column("vector", sa.LargeBinary, nullable=False),
    )
    op.create_index("gaps_last_asked", "gaps", ["last_asked_at"])

    op.create_table(
        "turns",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("call_sid", sa.String(64)),
        sa.Column("conversation_id", sa.String(128)),
        sa.Column("event_id", sa.Integer),
        sa.Column("started_at", Time, nullable=False),
        sa.Column("caller_text", sa.Text, nullable=False),
        sa.Column("agent_text", sa.Text, nullable=False),
        sa.Column("interrupted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("abstained", sa.Boolean),
        sa.Column("fallback", sa.String(64)),
        sa.Column("tools", sa.JSON),
        sa.Column("retrieval_ms", sa.Float),
        sa.Column("llm_first_token_ms", sa.Float),
        sa.Column("first_chunk_ms", sa.Float),
        sa.Column("total_ms", sa.Float),
        sa.Column("gap_id", Id, sa.ForeignKey("gaps.id", ondelete="SET NULL")),
    )
    op.create_index("turns_call", "turns", ["call_sid", "id"])
    op.create_index("turns_conversation", "turns", ["conversation_id", "id"])
    op.create_index("turns_started", "turns", ["started_at"])
    op.create_index("turns_gap", "turns", ["gap_id"])

    op.create_table(
        "passages",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("headings", sa.JSON, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
    )
    op.create_table(
        "turn_sources",
        sa.Column("turn_id", Id, sa.ForeignKey("turns.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("rank", sa.Integer, primary_key=True),
        sa.Column("passage_id", sa.String(64), sa.ForeignKey("passages.id"), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("similarity", sa.Float, nullable=False),
    )
    op.create_index("turn_sources_passage", "turn_sources", ["passage_id"])

    op.create_table(
        "messages",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("callback_number", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("call_sid", sa.String(64)),
        sa.Column("caller", sa.String(32)),
        sa.Column("conversation_id", sa.String(128)),
        sa.Column("handled_at", Time),
        sa.Column("legacy_id", sa.Integer, unique=True),
    )
    op.create_index("messages_created", "messages", ["created_at", "id"])


def downgrade() -> None:
    for table in ("messages", "turn_sources", "passages", "turns", "gaps", "calls"):
        op.drop_table(table)
