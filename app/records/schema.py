"""The records store's tables: calls, their turns, the passages turns read, knowledge gaps, messages,
the outbox, what the caller lookup answered about each call, and each call's analysis.

SQLAlchemy Core, one definition for SQLite and PostgreSQL. The schema is created and upgraded by
the Alembic revisions in `migrations/`; this module is what queries are written against, and a
revision that changes a table changes it here too.

Times are stored as timezone-aware UTC. A call's `outcome` is a stored generated column, so the
calls list filters on an index instead of working out every call's outcome per page.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

metadata = MetaData()


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out: SQLite keeps no offset, so values are stored as UTC and read
    back as UTC (which also keeps its text comparisons in time order)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("records store naive datetimes nowhere: pass an aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Sqlite only makes an INTEGER PRIMARY KEY autoincrement; PostgreSQL's BIGINT identity for the rest.
Id = BigInteger().with_variant(Integer(), "sqlite")

# Most telling first: a call that was transferred is "transferred" even if a question went unanswered.
OUTCOME_SQL = (
    "CASE WHEN transferred_to IS NOT NULL THEN 'transferred'"
    " WHEN messages > 0 THEN 'message'"
    " WHEN end_reason = 'fallback' THEN 'fallback'"
    " WHEN unanswered > 0 THEN 'unanswered'"
    " WHEN end_reason = 'busy' THEN 'busy'"
    " ELSE 'answered' END"
)
OUTCOMES = ("answered", "transferred", "message", "fallback", "unanswered", "busy")

calls = Table(
    "calls",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("call_sid", String(64), nullable=False, unique=True),
    Column("conversation_id", String(128)),
    Column("caller", String(32)),  # +E.164, or NULL when Twilio gave no number (anonymous, sip:, client:)
    Column("started_at", UtcDateTime()),  # the webhook
    Column("answered_at", UtcDateTime()),  # the media stream and conversation are up
    Column("ended_at", UtcDateTime()),
    Column("duration_s", Float),
    # caller_hung_up, agent_ended, transferred, max_duration, fallback, busy
    Column("end_reason", String(32)),
    Column("end_detail", String(64)),  # the bridge's own reason (upstream_unreachable, ...)
    Column("transferred_to", String(32)),  # the department a transfer connected the caller to
    # The call's latest transfer: its department and result (ringing, connected, no_answer, busy,
    # declined, voicemail, failed, canceled, closed).
    Column("transfer_department", String(32)),
    Column("transfer_result", String(16)),
    Column("turns", Integer, nullable=False, server_default="0"),
    Column("messages", Integer, nullable=False, server_default="0"),
    Column("unanswered", Integer, nullable=False, server_default="0"),
    Column("greeting", Text),
    Column("outcome", String(16), Computed(OUTCOME_SQL, persisted=True)),
    Index("calls_started", "started_at", "id"),
    Index("calls_outcome_started", "outcome", "started_at", "id"),
    Index("calls_conversation", "conversation_id"),
)

gaps = Table(
    "gaps",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("example", Text, nullable=False),  # the first wording asked
    Column("count", Integer, nullable=False, server_default="1"),
    Column("first_asked_at", UtcDateTime(), nullable=False),
    Column("last_asked_at", UtcDateTime(), nullable=False),
    Column("handled_at", UtcDateTime()),  # cleared when the question is asked again
    # The sum of the unit embeddings of every wording: its direction is the gap's centroid.
    Column("vector", LargeBinary, nullable=False),
    Index("gaps_last_asked", "last_asked_at"),
)

turns = Table(
    "turns",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("call_sid", String(64)),  # NULL for a conversation without a call (make ask)
    Column("conversation_id", String(128)),
    Column("event_id", Integer),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("caller_text", Text, nullable=False),  # sanitised, secrets redacted
    Column("agent_text", Text, nullable=False),  # what was sent to be spoken, secrets redacted
    Column("interrupted", Boolean, nullable=False, server_default=false()),
    Column("outcome", String(32), nullable=False),
    Column("abstained", Boolean),
    Column("fallback", String(64)),
    Column("tools", JSON),  # [{"tool": ..., "decision": ...}]
    Column("retrieval_ms", Float),
    Column("llm_first_token_ms", Float),
    Column("first_chunk_ms", Float),
    Column("total_ms", Float),
    Column("gap_id", Id, ForeignKey("gaps.id", ondelete="SET NULL")),
    Index("turns_call", "call_sid", "id"),
    Index("turns_conversation", "conversation_id", "id"),
    Index("turns_started", "started_at"),
    Index("turns_gap", "gap_id"),
)

passages = Table(
    "passages",
    metadata,
    Column("id", String(64), primary_key=True),  # the index's chunk id (a hash of its content)
    Column("source", Text, nullable=False),
    Column("headings", JSON, nullable=False),
    Column("text", Text, nullable=False),
)

turn_sources = Table(
    "turn_sources",
    metadata,
    Column("turn_id", Id, ForeignKey("turns.id", ondelete="CASCADE"), primary_key=True),
    Column("rank", Integer, primary_key=True),
    Column("passage_id", String(64), ForeignKey("passages.id"), nullable=False),
    Column("score", Float, nullable=False),
    Column("similarity", Float, nullable=False),
    Index("turn_sources_passage", "passage_id"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("name", Text, nullable=False),
    Column("callback_number", String(32), nullable=False),
    Column("message", Text, nullable=False),
    Column("call_sid", String(64)),
    Column("caller", String(32)),
    Column("conversation_id", String(128)),
    Column("department", String(32)),  # the department it is for, if any
    Column("handled_at", UtcDateTime()),
    Column("legacy_id", Integer, unique=True),  # its id in the messages.sqlite3 it was carried over from
    Index("messages_created", "created_at", "id"),
)

# One row per event and destination, written in the transaction of what it announces, so a crash
# between "saved" and "sent" loses nothing. Each destination is sent in id order, one event at a
# time: a worker leases the destination's oldest pending row (`lease_until`, `lease_token`).
outbox = Table(
    "outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(40), nullable=False),  # the same for every destination and every try
    Column("type", String(32), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("destination", String(1100), nullable=False),  # a webhook URL, or mailto:addresses
    Column("call_sid", String(64)),  # the call the event is about, if any
    Column("data", JSON),  # NULL until first sent for call.ended, composed then from the records
    Column("state", String(16), nullable=False, server_default="pending"),  # pending, delivered, dead
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("retry_until", UtcDateTime(), nullable=False),  # a failure after this makes the event dead
    Column("lease_until", UtcDateTime()),
    Column("lease_token", String(32)),
    Column("last_error", String(200)),
    Column("done_at", UtcDateTime()),  # delivered or dead
    Index("outbox_event_destination", "event_id", "destination", unique=True),
    Index("outbox_destination_state", "destination", "state", "id"),
    Index("outbox_state", "state", "id"),
)


# What the caller lookup answered at pickup: one row per call that was looked up.
caller_lookups = Table(
    "caller_lookups",
    metadata,
    Column("call_sid", String(64), primary_key=True),
    Column("looked_up_at", UtcDateTime(), nullable=False),
    Column("outcome", String(16), nullable=False),  # answered, unknown, timeout, error, invalid, too_large
    Column("data", JSON),  # the caller's data as kept: checked, capped, redacted
    Index("caller_lookups_at", "looked_up_at"),
)

# Each ended call's analysis, and the work of making it: pending until `not_before` (late turns),
# then leased by one replica's analyst at a time (`lease_until`, `lease_token`), as the outbox is.
analyses = Table(
    "analyses",
    metadata,
    Column("call_sid", String(64), primary_key=True),
    Column("created_at", UtcDateTime(), nullable=False),  # the call's end
    Column("state", String(16), nullable=False, server_default="pending"),  # pending, done, failed
    Column("not_before", UtcDateTime(), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("lease_until", UtcDateTime()),
    Column("lease_token", String(32)),
    Column("method", String(8)),  # model, rules
    Column("summary", Text),
    Column("intent", String(32)),
    Column("need_met", String(16)),  # resolved, transferred, message_taken, unresolved
    Column("fields", JSON),  # ANALYSIS_FILE's fields: name -> value, or null
    Column("empty_fields", JSON),  # name -> why it is empty ("no model", "not in the call")
    Column("error", String(200)),  # why the last try failed
    Column("done_at", UtcDateTime()),
    Index("analyses_due", "state", "not_before"),
    Index("analyses_intent", "intent"),
    Index("analyses_need_met", "need_met"),
    Index("analyses_created", "created_at"),
)


def upsert_into(conn: AsyncConnection, table: Table) -> Any:
    """An INSERT of this database's dialect, which has ON CONFLICT (SQLite and PostgreSQL alike)."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)
