"""Writing record events: each one an upsert or insert, so they may arrive in any order and from
any replica (a turn may be written before the replica holding the media stream records its call).

Turns arrive redacted (the recorder redacts them, see `app.records.held`). A call's end and a new
knowledge gap are announced in the outbox in the same transaction; a call's end queues its analysis
there too.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.records.analyses import enqueue
from app.records.events import (
    CallAnswered,
    CallEnded,
    CallerLookedUp,
    CallReceived,
    CallRefused,
    RecordEvent,
    TransferResult,
    TurnDone,
)
from app.records.gaps import GapGrouper
from app.records.outbox import CALL_ENDED, GAP_CREATED, Outbox, call_ended_event_id
from app.records.schema import caller_lookups, calls, passages, turn_sources, turns, upsert_into

Updates = Callable[[Any], dict[str, Any]]


async def upsert_call(
    conn: AsyncConnection, call_sid: str, values: dict[str, Any], updates: Updates | None = None
) -> None:
    """Insert the call with `values`; if it exists, set `updates(excluded)` (default: the same values)."""
    statement = upsert_into(conn, calls).values(call_sid=call_sid, **values)
    set_ = updates(statement.excluded) if updates else {k: statement.excluded[k] for k in values}
    await conn.execute(statement.on_conflict_do_update(index_elements=[calls.c.call_sid], set_=set_))


def _first_start(excluded: Any) -> dict[str, Any]:
    # The first time a call is heard of (the webhook) is when it started, whatever order events arrive in.
    return {"started_at": func.coalesce(calls.c.started_at, excluded.started_at)}


async def write(conn: AsyncConnection, event: RecordEvent, gaps: GapGrouper | None, outbox: Outbox) -> None:
    e: Any = event
    kind = type(event)
    if kind is TurnDone:
        await _turn(conn, e, gaps, outbox)
    elif kind is CallReceived:
        await upsert_call(
            conn,
            e.call_sid,
            {"caller": e.caller, "started_at": e.at},
            lambda x: {"caller": x.caller, **_first_start(x)},
        )
    elif kind is CallRefused:
        ended = {"ended_at": e.at, "duration_s": 0.0, "end_reason": e.reason}
        await upsert_call(conn, e.call_sid, {"started_at": e.at, **ended}, lambda x: {**ended, **_first_start(x)})
        await _ended(conn, outbox, e.call_sid, e.at)
    elif kind is CallAnswered:
        # A call back from a transfer is answered again on a new conversation: the first answer and
        # greeting stay, the conversation id is the latest.
        await upsert_call(
            conn,
            e.call_sid,
            {"conversation_id": e.conversation_id, "answered_at": e.at, "greeting": e.greeting},
            lambda x: {
                "conversation_id": x.conversation_id,
                "answered_at": func.coalesce(calls.c.answered_at, x.answered_at),
                "greeting": func.coalesce(calls.c.greeting, x.greeting),
            },
        )
    elif kind is TransferResult:
        values = {"transfer_department": e.department, "transfer_result": e.result}
        if e.result == "connected":
            values["transferred_to"] = e.department
        await upsert_call(conn, e.call_sid, values)
    elif kind is CallEnded:
        duration = await _duration(conn, e)
        values = {"ended_at": e.at, "duration_s": duration, "end_reason": e.reason, "end_detail": e.detail}
        await upsert_call(conn, e.call_sid, values)
        await _ended(conn, outbox, e.call_sid, e.at)
        # Analysed after the same grace as call.ended's: a turn another replica is still writing counts.
        await enqueue(conn, e.call_sid, e.at, datetime.now(UTC) + outbox.call_ended_grace)
    elif kind is CallerLookedUp:
        statement = upsert_into(conn, caller_lookups).values(
            call_sid=e.call_sid, looked_up_at=e.at, outcome=e.outcome, data=e.data
        )
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[caller_lookups.c.call_sid],
                set_={k: statement.excluded[k] for k in ("looked_up_at", "outcome", "data")},
            )
        )


async def _duration(conn: AsyncConnection, ended: CallEnded) -> float:
    """A call that went through a transfer lasted from its first answer, over every stream it had;
    any other, as long as its one stream."""
    row = (
        await conn.execute(
            select(calls.c.answered_at, calls.c.transfer_department).where(calls.c.call_sid == ended.call_sid)
        )
    ).one_or_none()
    if row is None or row.transfer_department is None or row.answered_at is None:
        return ended.duration_s
    return max((ended.at - row.answered_at).total_seconds(), 0.0)


async def _ended(conn: AsyncConnection, outbox: Outbox, call_sid: str, at: datetime) -> None:
    """call.ended: its data is composed when it is first sent, after a grace for late turns."""
    not_before = datetime.now(UTC) + outbox.call_ended_grace
    event_id = call_ended_event_id(call_sid)
    await outbox.announce(conn, CALL_ENDED, None, at, call_sid=call_sid, event_id=event_id, not_before=not_before)


async def _turn(conn: AsyncConnection, turn: TurnDone, gaps: GapGrouper | None, outbox: Outbox) -> None:
    call_sid = turn.call_sid
    if call_sid is None and turn.conversation_id:
        call_sid = (
            await conn.execute(select(calls.c.call_sid).where(calls.c.conversation_id == turn.conversation_id))
        ).scalar_one_or_none()
    gap_id = None
    if turn.unanswered and gaps is not None and turn.gap_vector is not None:
        question = turn.unanswered
        gap_id, new = await gaps.assign(conn, question, turn.gap_vector, turn.started_at)
        if new:
            data = {
                "gap_id": gap_id,
                "example": question,
                "asked_at": turn.started_at.isoformat(timespec="seconds"),
                "call_sid": call_sid,
                "review_url": outbox.link("/admin/gaps"),
            }
            await outbox.announce(conn, GAP_CREATED, data, turn.started_at, call_sid=call_sid)
    timings = turn.timings_ms
    turn_id = (
        await conn.execute(
            insert(turns)
            .values(
                call_sid=call_sid,
                conversation_id=turn.conversation_id,
                event_id=turn.event_id,
                started_at=turn.started_at,
                caller_text=turn.caller_text,
                agent_text=turn.agent_text,
                interrupted=turn.interrupted,
                outcome=turn.outcome,
                abstained=turn.abstained,
                fallback=turn.fallback,
                tools=turn.tools or None,
                retrieval_ms=timings.get("retrieval"),
                llm_first_token_ms=timings.get("llm_first_token"),
                first_chunk_ms=timings.get("first_chunk"),
                total_ms=timings.get("total"),
                gap_id=gap_id,
            )
            .returning(turns.c.id)
        )
    ).scalar_one()
    if turn.sources:
        await conn.execute(
            upsert_into(conn, passages).on_conflict_do_nothing(index_elements=[passages.c.id]),
            [
                {"id": s.id, "source": s.source, "headings": list(s.headings), "text": s.text}
                for s in {s.id: s for s in turn.sources}.values()
            ],
        )
        await conn.execute(
            insert(turn_sources),
            [
                {
                    "turn_id": turn_id,
                    "rank": rank,
                    "passage_id": s.id,
                    "score": s.score,
                    "similarity": s.similarity,
                }
                for rank, s in enumerate(turn.sources)
            ],
        )
    if call_sid is not None:
        await upsert_call(
            conn,
            call_sid,
            {"turns": 1, "unanswered": int(gap_id is not None)},
            lambda x: {"turns": calls.c.turns + 1, "unanswered": calls.c.unanswered + x.unanswered},
        )
