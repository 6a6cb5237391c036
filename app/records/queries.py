"""Reading the records: the calls list, one call, the knowledge gaps and the overview, for the review
page and the command line alike.

The calls list pages by keyset on (started_at, id), newest first, on the index that filter uses,
so any page costs the same with a hundred calls or a hundred thousand. Each call comes with its
analysis, if it has one (summary, intent, whether the caller's need was met).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Date, cast, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.records.analyses import NEED_MET, StoredAnalysis, stored
from app.records.outbox import count_dead
from app.records.schema import OUTCOMES, analyses, caller_lookups, calls, gaps, messages, passages, turn_sources, turns

PAGE = 50
OVERVIEW_DAYS = 14
LATENCY_SAMPLE = 10_000  # the most recent turns the overview's percentiles are taken over
GAP_CALLS = 10  # calls linked from each gap
GAPS_PAGE = 100
TOP_INTENTS = 5


def mask_phone(number: str | None) -> str:
    """+E.164 with every digit but the last four hidden."""
    if not number:
        return "unknown"
    digits = [c for c in number if c.isdigit()]
    return ("+" if number.startswith("+") else "") + "•" * max(len(digits) - 4, 0) + "".join(digits[-4:])


_HOW = {
    "caller_hung_up": "caller hung up",
    "transferred": "transferred to a colleague",
    "agent_ended": "agent ended the call",
    "max_duration": "reached the maximum call length",
    "fallback": "fallback (the agent could not continue)",
    "busy": "busy (no free line)",
    "drained": "closed with a goodbye: the server was stopping",
}


_TRANSFER_HOW = {
    "ringing": "ringing",
    "connected": "connected",
    "no_answer": "no answer, back to the agent",
    "busy": "busy, back to the agent",
    "failed": "the call did not go through, back to the agent",
    "declined": "declined, back to the agent",
    "voicemail": "a voicemail answered, back to the agent",
    "canceled": "the caller hung up while it rang",
    "closed": "closed, not dialled",
}


@dataclass(frozen=True)
class CallRow:
    call_sid: str
    started_at: datetime
    caller: str | None
    duration_s: float | None
    outcome: str
    turns: int
    end_reason: str | None
    transferred_to: str | None
    ended_at: datetime | None
    conversation_id: str | None
    transfer_department: str | None = None
    transfer_result: str | None = None
    direction: str = "inbound"  # or outbound: a call-back the agent placed
    message_id: int | None = None  # the message an outbound call returned
    # The call's analysis, last (the query reads it from its own table): its state (pending, done,
    # failed; None before the call ended) and results.
    analysis_state: str | None = None
    summary: str | None = None
    intent: str | None = None
    need_met: str | None = None

    @property
    def caller_masked(self) -> str:
        return mask_phone(self.caller)

    @property
    def transfer(self) -> dict[str, str] | None:
        """The call's latest transfer: its department and result."""
        if self.transfer_department is None:
            return None
        return {"department": self.transfer_department, "result": self.transfer_result or "unknown"}

    @property
    def transfer_how(self) -> str | None:
        """The transfer for people: "connected to sales", "sales: no answer, back to the agent"."""
        if self.transfer_department is None:
            return None
        result = self.transfer_result or "unknown"
        return f"{self.transfer_department}: {_TRANSFER_HOW.get(result, result)}"

    @property
    def ended_how(self) -> str:
        if self.transferred_to:
            return f"transferred to {self.transferred_to}"
        if self.ended_at is None:
            return "in progress"
        return _HOW.get(self.end_reason or "", self.end_reason or "unknown")

    def to_json(self) -> dict[str, Any]:
        return {
            "call_sid": self.call_sid,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "caller": self.caller_masked,
            "duration_s": round(self.duration_s, 1) if self.duration_s is not None else None,
            "outcome": self.outcome,
            "ended": self.ended_how,
            "end_reason": self.end_reason,
            "transferred_to": self.transferred_to,
            "transfer": self.transfer,
            "turns": self.turns,
            "conversation_id": self.conversation_id,
            "analysis": self.analysis_state,
            "summary": self.summary,
            "intent": self.intent,
            "need_met": self.need_met,
            "direction": self.direction,
            "message_id": self.message_id,
        }


@dataclass(frozen=True)
class SourceView:
    source: str
    headings: list[str]
    text: str
    score: float
    similarity: float

    @property
    def heading(self) -> str:
        return " > ".join(self.headings)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "heading": self.heading,
            "score": round(self.score, 3),
            "similarity": round(self.similarity, 3),
        }


@dataclass(frozen=True)
class TurnView:
    id: int
    started_at: datetime
    caller_text: str
    agent_text: str
    interrupted: bool
    outcome: str
    abstained: bool | None
    fallback: str | None
    tools: list[dict[str, str]]
    timings_ms: dict[str, float | None]
    unanswered: bool
    sources: list[SourceView] = field(default_factory=list)
    event_id: int | None = None  # the Speech Engine's id of the turn

    def to_json(self) -> dict[str, Any]:
        return {
            "started_at": _iso(self.started_at),
            "caller": self.caller_text,
            "agent": self.agent_text,
            "interrupted": self.interrupted,
            "outcome": self.outcome,
            "abstained": self.abstained,
            "unanswered": self.unanswered,
            "fallback": self.fallback,
            "tools": self.tools,
            "timings_ms": self.timings_ms,
            "sources": [s.to_json() for s in self.sources],
        }


@dataclass(frozen=True)
class CallerLookupView:
    """What the caller lookup came to, and the caller's data as kept."""

    outcome: str
    data: dict[str, Any] | None
    at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "data": self.data, "looked_up_at": _iso(self.at)}


@dataclass(frozen=True)
class CallDetail:
    call: CallRow
    greeting: str | None
    turns: list[TurnView]
    caller_lookup: CallerLookupView | None = None
    analysis: StoredAnalysis | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.call.to_json(),
            "greeting": self.greeting,
            "caller_lookup": self.caller_lookup.to_json() if self.caller_lookup else None,
            "analysis": self.analysis.to_json() if self.analysis else None,
            "turn_list": [t.to_json() for t in self.turns],
        }


@dataclass(frozen=True)
class GapRow:
    id: int
    example: str
    count: int
    first_asked_at: datetime
    last_asked_at: datetime
    handled_at: datetime | None
    calls: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "example": self.example,
            "count": self.count,
            "first_asked_at": _iso(self.first_asked_at),
            "last_asked_at": _iso(self.last_asked_at),
            "handled": self.handled_at is not None,
            "calls": self.calls,
        }


@dataclass(frozen=True)
class Overview:
    days: list[tuple[date, int]]
    outcomes: dict[str, int]
    first_chunk_p50_ms: float | None
    first_chunk_p95_ms: float | None
    latency_turns: int
    need_met: dict[str, int] = field(default_factory=dict)  # of the analysed calls
    top_intents: list[tuple[str, int]] = field(default_factory=list)  # most frequent first

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def share(self, outcome: str) -> float:
        return self.outcomes.get(outcome, 0) / self.total if self.total else 0.0

    @property
    def analysed(self) -> int:
        return sum(self.need_met.values())

    @property
    def resolved_share(self) -> float | None:
        """The share of analysed calls whose need was resolved (None before any is analysed)."""
        return self.need_met.get("resolved", 0) / self.analysed if self.analysed else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


# CallRow's fields: the calls table's, then these of its analysis.
_ANALYSIS_COLUMNS = [analyses.c.state, analyses.c.summary, analyses.c.intent, analyses.c.need_met]
_CALL_COLUMNS = [calls.c[name] for name in list(CallRow.__dataclass_fields__)[: -len(_ANALYSIS_COLUMNS)]]
_CALLS = calls.outerjoin(analyses, analyses.c.call_sid == calls.c.call_sid)


MAX_ID = 2**63 - 1  # the largest id (or offset) the store can compare with, on either database


@dataclass(frozen=True)
class Cursor:
    """Where a page of the calls list ends: the next page starts strictly after it."""

    started_at: datetime
    id: int

    def encode(self) -> str:
        return f"{self.started_at.isoformat()}_{self.id}"

    @classmethod
    def decode(cls, text: str | None) -> Cursor | None:
        """The cursor, or None when the text is not one; OverflowError for an id past MAX_ID."""
        if not text:
            return None
        when, _, ident = text.rpartition("_")
        try:
            started = datetime.fromisoformat(when)
            number = int(ident)
        except ValueError:
            return None
        if abs(number) > MAX_ID:
            raise OverflowError("cursor id out of range")
        return cls(started if started.tzinfo else started.replace(tzinfo=UTC), number)


async def list_calls(
    conn: AsyncConnection,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    outcome: str | None = None,
    intent: str | None = None,
    need_met: str | None = None,
    after: Cursor | None = None,
    limit: int = PAGE,
) -> tuple[list[CallRow], Cursor | None]:
    """Newest first; returns the page and the cursor of the next one (None on the last page)."""
    query = select(*_CALL_COLUMNS, *_ANALYSIS_COLUMNS, calls.c.id).select_from(_CALLS)
    query = query.where(calls.c.started_at.is_not(None))
    if outcome in OUTCOMES:
        query = query.where(calls.c.outcome == outcome)
    if intent:
        query = query.where(analyses.c.intent == intent)
    if need_met in NEED_MET:
        query = query.where(analyses.c.need_met == need_met)
    if since is not None:
        query = query.where(calls.c.started_at >= since)
    if until is not None:
        query = query.where(calls.c.started_at < until)
    if after is not None:
        query = query.where(tuple_(calls.c.started_at, calls.c.id) < tuple_(after.started_at, after.id))
    query = query.order_by(calls.c.started_at.desc(), calls.c.id.desc()).limit(limit + 1)
    rows = list(await conn.execute(query))
    page = [CallRow(*row[:-1]) for row in rows[:limit]]
    more = len(rows) > limit
    return page, Cursor(rows[limit - 1].started_at, rows[limit - 1].id) if more else None


async def get_call(conn: AsyncConnection, call_sid: str) -> CallDetail | None:
    row = (
        await conn.execute(
            select(*_CALL_COLUMNS, *_ANALYSIS_COLUMNS, calls.c.greeting)
            .select_from(_CALLS)
            .where(calls.c.call_sid == call_sid)
        )
    ).one_or_none()
    if row is None:
        return None
    looked_up = (await conn.execute(select(caller_lookups).where(caller_lookups.c.call_sid == call_sid))).one_or_none()
    found = (
        await conn.execute(select(turns).where(turns.c.call_sid == call_sid).order_by(turns.c.started_at, turns.c.id))
    ).all()
    sources: dict[int, list[SourceView]] = defaultdict(list)
    if found:
        read = await conn.execute(
            select(
                turn_sources.c.turn_id,
                turn_sources.c.score,
                turn_sources.c.similarity,
                passages.c.source,
                passages.c.headings,
                passages.c.text,
            )
            .join(passages, passages.c.id == turn_sources.c.passage_id)
            .where(turn_sources.c.turn_id.in_([t.id for t in found]))
            .order_by(turn_sources.c.turn_id, turn_sources.c.rank)
        )
        for s in read:
            sources[s.turn_id].append(SourceView(s.source, list(s.headings), s.text, s.score, s.similarity))
    views = [
        TurnView(
            id=t.id,
            started_at=t.started_at,
            caller_text=t.caller_text,
            agent_text=t.agent_text,
            interrupted=t.interrupted,
            outcome=t.outcome,
            abstained=t.abstained,
            fallback=t.fallback,
            tools=list(t.tools or []),
            timings_ms={
                "retrieval": t.retrieval_ms,
                "llm_first_token": t.llm_first_token_ms,
                "first_chunk": t.first_chunk_ms,
                "total": t.total_ms,
            },
            unanswered=t.gap_id is not None,
            sources=sources.get(t.id, []),
            event_id=t.event_id,
        )
        for t in found
    ]
    lookup = CallerLookupView(looked_up.outcome, looked_up.data, looked_up.looked_up_at) if looked_up else None
    return CallDetail(CallRow(*row[:-1]), row.greeting, views, lookup, await stored(conn, call_sid))


async def list_gaps(
    conn: AsyncConnection, *, handled: bool = False, limit: int | None = None, offset: int = 0
) -> list[GapRow]:
    """Open gaps (or handled ones), most asked first, with the calls they were last asked on."""
    query = select(
        gaps.c.id, gaps.c.example, gaps.c.count, gaps.c.first_asked_at, gaps.c.last_asked_at, gaps.c.handled_at
    ).where(gaps.c.handled_at.is_not(None) if handled else gaps.c.handled_at.is_(None))
    query = query.order_by(gaps.c.count.desc(), gaps.c.last_asked_at.desc(), gaps.c.id).offset(offset).limit(limit)
    rows = list(await conn.execute(query))
    linked: dict[int, list[str]] = defaultdict(list)
    if rows:
        last = func.max(turns.c.started_at)
        per_call = (
            select(
                turns.c.gap_id,
                turns.c.call_sid,
                func.row_number().over(partition_by=turns.c.gap_id, order_by=last.desc()).label("n"),
            )
            .where(turns.c.gap_id.in_([r.id for r in rows]), turns.c.call_sid.is_not(None))
            .group_by(turns.c.gap_id, turns.c.call_sid)
            .subquery()
        )
        asked = await conn.execute(
            select(per_call.c.gap_id, per_call.c.call_sid)
            .where(per_call.c.n <= GAP_CALLS)
            .order_by(per_call.c.gap_id, per_call.c.n)
        )
        for gap_id, call_sid in asked:
            linked[gap_id].append(call_sid)
    return [GapRow(*row, calls=linked.get(row.id, [])) for row in rows]


async def mark_gap_handled(conn: AsyncConnection, gap_id: int, now: datetime | None = None) -> bool:
    done = await conn.execute(
        update(gaps).where(gaps.c.id == gap_id, gaps.c.handled_at.is_(None)).values(handled_at=now or datetime.now(UTC))
    )
    return bool(done.rowcount)


async def overview(conn: AsyncConnection, now: datetime | None = None, days: int = OVERVIEW_DAYS) -> Overview:
    now = now or datetime.now(UTC)
    today = now.date()
    since = datetime.combine(today - timedelta(days=days - 1), datetime.min.time(), UTC)
    day = func.date(calls.c.started_at) if conn.dialect.name == "sqlite" else cast(calls.c.started_at, Date)
    per_day = {
        (d if isinstance(d, date) else date.fromisoformat(d)): n
        for d, n in await conn.execute(select(day, func.count()).where(calls.c.started_at >= since).group_by(day))
    }
    outcomes = dict(
        (
            await conn.execute(
                select(calls.c.outcome, func.count()).where(calls.c.started_at >= since).group_by(calls.c.outcome)
            )
        ).all()
    )
    recent = (
        select(turns.c.first_chunk_ms)
        .where(turns.c.started_at >= since, turns.c.first_chunk_ms.is_not(None))
        .order_by(turns.c.id.desc())
        .limit(LATENCY_SAMPLE)
    )
    analysed = (
        select(analyses.c.need_met, analyses.c.intent, func.count().label("n"))
        .select_from(calls.join(analyses, analyses.c.call_sid == calls.c.call_sid))
        .where(calls.c.started_at >= since, analyses.c.state == "done")
        .group_by(analyses.c.need_met, analyses.c.intent)
    )
    need_met: dict[str, int] = defaultdict(int)
    intents: dict[str, int] = defaultdict(int)
    for met, intent, n in await conn.execute(analysed):
        need_met[met] += n
        intents[intent] += n
    values = sorted((await conn.execute(recent)).scalars())
    p50 = p95 = None
    if len(values) >= 2:
        q = statistics.quantiles(values, n=100, method="inclusive")
        p50, p95 = q[49], q[94]
    elif values:
        p50 = p95 = values[0]
    return Overview(
        days=[(today - timedelta(days=n), per_day.get(today - timedelta(days=n), 0)) for n in range(days - 1, -1, -1)],
        outcomes=outcomes,
        first_chunk_p50_ms=p50,
        first_chunk_p95_ms=p95,
        latency_turns=len(values),
        need_met=dict(need_met),
        top_intents=sorted(intents.items(), key=lambda item: (-item[1], item[0]))[:TOP_INTENTS],
    )


async def count_open(conn: AsyncConnection) -> dict[str, int]:
    """Open gaps and messages, and events that could not be delivered, for the navigation."""
    open_gaps = (
        await conn.execute(select(func.count()).select_from(gaps).where(gaps.c.handled_at.is_(None)))
    ).scalar_one()
    open_messages = (
        await conn.execute(select(func.count()).select_from(messages).where(messages.c.handled_at.is_(None)))
    ).scalar_one()
    return {"gaps": open_gaps, "messages": open_messages, "deliveries": await count_dead(conn)}
