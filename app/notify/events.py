"""What is sent: an event's JSON body, the data of `call.ended` (composed from the records when it is
first sent), and how one send went."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.records.schema import calls

PING = "ping"


@dataclass(frozen=True)
class Sent:
    """How one send went: `error` is None when the destination took it (2xx, or the SMTP server's 250)."""

    status: int | None
    error: str | None
    answer: str = ""  # the start of what the destination answered

    @property
    def ok(self) -> bool:
        return self.error is None


def body(event_id: str, event_type: str, created_at: datetime, data: dict[str, Any]) -> bytes:
    """The request body: the same bytes on every try of one event."""
    envelope = {
        "id": event_id,
        "type": event_type,
        "created_at": created_at.astimezone(UTC).isoformat(timespec="seconds"),
        "data": data,
    }
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()


async def call_ended_data(conn: AsyncConnection, call_sid: str, review_url: str | None) -> dict[str, Any]:
    row = (
        await conn.execute(
            select(
                calls.c.caller, calls.c.started_at, calls.c.ended_at, calls.c.duration_s, calls.c.end_reason,
                calls.c.transferred_to, calls.c.turns, calls.c.unanswered, calls.c.messages,
                calls.c.transfer_department, calls.c.transfer_result, calls.c.direction, calls.c.message_id,
            ).where(calls.c.call_sid == call_sid)
        )
    ).one_or_none()  # fmt: skip
    if row is None:  # deleted by retention before it could be sent
        return {"call_sid": call_sid, "review_url": review_url}
    return {
        "call_sid": call_sid,
        "caller": row.caller,  # the other party: who called, or whom a call-back called
        "direction": row.direction,  # inbound, or outbound (a call-back)
        "message_id": row.message_id,  # the message an outbound call returned
        "started_at": _iso(row.started_at),
        "ended_at": _iso(row.ended_at),
        "duration_s": round(row.duration_s, 1) if row.duration_s is not None else None,
        # transferred, agent_ended, caller_hung_up, fallback, max_duration or busy
        "ended": "transferred" if row.transferred_to else row.end_reason,
        "transferred_to": row.transferred_to,
        # The call's latest transfer and its result (connected, no_answer, busy, declined, voicemail,
        # failed, canceled, closed), or null
        "transfer": {"department": row.transfer_department, "result": row.transfer_result}
        if row.transfer_department
        else None,
        "turns": row.turns,
        "unanswered": row.unanswered > 0,
        "messages": row.messages,
        "review_url": review_url,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None
