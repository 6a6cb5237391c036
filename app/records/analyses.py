"""Post-call analyses in the records store: queued in the transaction that records a call's end,
made by one replica's analyst at a time, then done (with `call.analyzed` in the outbox, in the same
transaction) or tried again later and, past its tries, failed.

A worker takes an analysis by a lease, as the outbox's delivery does: an UPDATE that only succeeds
while no unexpired lease is on the row, so among several replicas exactly one makes it (PostgreSQL
re-checks the condition on the locked row; SQLite runs one writer at a time). The lease outlasts
the bounded analysis, and a done analysis is never taken again.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.records.outbox import CALL_ANALYZED, Outbox
from app.records.schema import analyses, upsert_into

NEED_MET = ("resolved", "transferred", "message_taken", "unresolved")
ERROR_CHARS = 200


@dataclass(frozen=True)
class Analysis:
    """What a call was about: `fields` holds ANALYSIS_FILE's fields (None where empty, `empty` says why)."""

    summary: str
    intent: str
    need_met: str
    fields: dict[str, Any] = field(default_factory=dict)
    empty: dict[str, str] = field(default_factory=dict)
    method: str = "rules"  # or "model"

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "intent": self.intent,
            "need_met": self.need_met,
            "fields": self.fields,
            "empty_fields": self.empty,
            "method": self.method,
        }


@dataclass(frozen=True)
class StoredAnalysis:
    """An analysis as the records hold it: `state` pending, done or failed."""

    state: str
    attempts: int
    error: str | None
    analysis: Analysis | None

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"state": self.state}
        if self.analysis is not None:
            shown |= self.analysis.to_json()
        if self.state == "failed":
            shown["error"] = self.error
        return shown


@dataclass(frozen=True)
class Leased:
    call_sid: str
    attempts: int  # tries before this one
    token: str


def analyzed_event_id(call_sid: str) -> str:
    """A call is analysed once: one event, however often it would be announced."""
    return "evt_" + hashlib.sha256(f"{CALL_ANALYZED}:{call_sid}".encode()).hexdigest()[:32]


async def enqueue(conn: AsyncConnection, call_sid: str, ended_at: datetime, not_before: datetime) -> None:
    """The call's analysis, due at `not_before`; a pending one is put back to it (its call ended again)."""
    statement = upsert_into(conn, analyses).values(call_sid=call_sid, created_at=ended_at, not_before=not_before)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[analyses.c.call_sid],
            set_={"not_before": statement.excluded.not_before},
            where=analyses.c.state == "pending",
        )
    )


async def lease_next(conn: AsyncConnection, now: datetime, lease: timedelta) -> tuple[Leased | None, datetime | None]:
    """The oldest analysis that is due and not taken, leased to the caller; else (None, when one will
    be due), (None, None) when none is pending."""
    free = or_(analyses.c.lease_until.is_(None), analyses.c.lease_until <= now)
    head = (
        await conn.execute(
            select(analyses.c.call_sid)
            .where(analyses.c.state == "pending", analyses.c.not_before <= now, free)
            .order_by(analyses.c.not_before)
            .limit(1)
        )
    ).scalar_one_or_none()
    if head is None:
        a = analyses.c
        due = case((a.lease_until > a.not_before, a.lease_until), else_=a.not_before)
        return None, (await conn.execute(select(func.min(due)).where(a.state == "pending"))).scalar_one()
    token = secrets.token_hex(16)
    taken = await conn.execute(
        update(analyses)
        .where(analyses.c.call_sid == head, analyses.c.state == "pending", analyses.c.not_before <= now, free)
        .values(lease_until=now + lease, lease_token=token)
        .returning(analyses.c.attempts)
    )
    attempts = taken.scalar_one_or_none()
    if attempts is None:
        return None, now  # another worker was quicker: look again at once
    return Leased(head, attempts, token), None


async def finish(
    conn: AsyncConnection, row: Leased, analysis: Analysis, now: datetime, outbox: Outbox, event: dict[str, Any]
) -> bool:
    """Done, and `call.analyzed` announced with `event` as its data; False when the lease was lost."""
    done = await conn.execute(
        update(analyses)
        .where(analyses.c.call_sid == row.call_sid, analyses.c.lease_token == row.token)
        .values(
            state="done",
            method=analysis.method,
            summary=analysis.summary,
            intent=analysis.intent,
            need_met=analysis.need_met,
            fields=analysis.fields,
            empty_fields=analysis.empty,
            error=None,
            done_at=now,
            attempts=analyses.c.attempts + 1,
            lease_until=None,
            lease_token=None,
        )
    )
    if done.rowcount != 1:
        return False
    await outbox.announce(
        conn, CALL_ANALYZED, event, now, call_sid=row.call_sid, event_id=analyzed_event_id(row.call_sid)
    )
    return True


async def give_back(conn: AsyncConnection, row: Leased, now: datetime, error: str, retry_at: datetime | None) -> bool:
    """A try failed: due again at `retry_at`, or failed for good (None). False when the lease was lost."""
    values: dict[str, Any] = {"error": error[:ERROR_CHARS], "attempts": analyses.c.attempts + 1}
    if retry_at is None:
        values |= {"state": "failed", "done_at": now}
    else:
        values["not_before"] = retry_at
    done = await conn.execute(
        update(analyses)
        .where(analyses.c.call_sid == row.call_sid, analyses.c.lease_token == row.token)
        .values(lease_until=None, lease_token=None, **values)
    )
    return done.rowcount == 1


async def stored(conn: AsyncConnection, call_sid: str) -> StoredAnalysis | None:
    row = (await conn.execute(select(analyses).where(analyses.c.call_sid == call_sid))).one_or_none()
    if row is None:
        return None
    analysis = None
    if row.state == "done":
        fields, empty = row.fields or {}, row.empty_fields or {}
        analysis = Analysis(row.summary or "", row.intent or "", row.need_met or "", fields, empty, row.method)
    return StoredAnalysis(row.state, row.attempts, row.error, analysis)
