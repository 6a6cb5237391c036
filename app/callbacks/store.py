"""Call-backs and the do-not-call list in the records store, so they survive restarts and every
replica sees the same ones.

A call-back is one row per message. The dialer of any replica takes a due one by a lease: an UPDATE
that only succeeds while the row is still scheduled and due (or was taken by a replica that died
before the call was placed, its lease lapsed), so among several replicas exactly one places each
try (PostgreSQL re-checks the condition on the locked row; SQLite runs one writer at a time). The
try is counted when it is taken; Twilio's callbacks for the call name the try they belong to, and a
callback for an older try changes nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.records.schema import callbacks, do_not_call, messages, upsert_into

# Where a call-back stands. Open: scheduled, calling. Done: the rest.
SCHEDULED, CALLING = "scheduled", "calling"
REACHED, VOICEMAIL, NO_ANSWER = "reached", "voicemail", "no_answer"
DO_NOT_CALL, NOT_CALLABLE = "do_not_call", "not_callable"
OPEN = (SCHEDULED, CALLING)
DETAIL_CHARS = 200


@dataclass(frozen=True)
class Callback:
    id: int
    message_id: int
    number: str
    state: str
    requested_at: datetime
    not_before: datetime
    due_at: datetime | None
    attempts: int
    last_result: str | None
    detail: str | None
    call_sid: str | None
    placed_at: datetime | None
    done_at: datetime | None

    def shown(self) -> str:
        """Where it stands, for people (the review page, `messages`)."""
        if self.state == SCHEDULED and self.due_at is not None:
            return f"scheduled for {self.due_at:%Y-%m-%d %H:%M} UTC" + (
                f" (try {self.attempts + 1}; last: {self.last_result.replace('_', ' ')})" if self.last_result else ""
            )
        if self.state == NO_ANSWER:
            return f"no answer after {self.attempts} {'try' if self.attempts == 1 else 'tries'}"
        if self.state == NOT_CALLABLE:
            return f"not called: {self.detail}"
        return {CALLING: "calling", REACHED: "reached", VOICEMAIL: "voicemail left", DO_NOT_CALL: "do not call"}.get(
            self.state, self.state
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "shown": self.shown(),
            "due_at": self.due_at.isoformat(timespec="seconds") if self.due_at else None,
            "attempts": self.attempts,
            "detail": self.detail,
            "call_sid": self.call_sid,
        }


_COLUMNS = [callbacks.c[name] for name in Callback.__dataclass_fields__]


@dataclass(frozen=True)
class Plan:
    """What the rules make of a call-back: `state` scheduled (for `due_at`), or why it is not placed."""

    state: str
    due_at: datetime | None = None
    detail: str | None = None


# (number, department, not before) → its plan; made by `app.callbacks.dialer.Planner`.
Planning = Callable[[str, str | None, datetime], Plan]


@dataclass(frozen=True)
class Taken:
    """A try the caller holds the lease on."""

    callback: Callback
    department: str | None  # its message's
    token: str


@dataclass(frozen=True)
class Target:
    number: str
    message_id: int
    name: str
    message: str
    department: str | None


class CallbackStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # --- scheduling -----------------------------------------------------------------------------

    async def schedule(self, message_id: int, not_before: datetime, plan: Planning, now: datetime) -> Callback | None:
        """Schedule the message's call-back (again, if the last one is over); None for no such message.
        One already under way is left as it is."""
        async with self.engine.begin() as conn:
            found = (
                await conn.execute(
                    select(messages.c.callback_number, messages.c.department).where(messages.c.id == message_id)
                )
            ).one_or_none()
            if found is None:
                return None
            return await schedule_in(conn, message_id, found.callback_number, found.department, not_before, plan, now)

    async def get(self, message_id: int) -> Callback | None:
        async with self.engine.connect() as conn:
            return await _by_message(conn, message_id)

    async def for_messages(self, message_ids: list[int]) -> dict[int, Callback]:
        if not message_ids:
            return {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(*_COLUMNS).where(callbacks.c.message_id.in_(message_ids)))
            return {row.message_id: Callback(**row._mapping) for row in rows}

    # --- the dialer -----------------------------------------------------------------------------

    async def due(self, now: datetime, limit: int = 20) -> list[Callback]:
        """Scheduled ones whose time has come, and tries a replica took but never placed (its lease lapsed)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(*_COLUMNS).where(_claimable(now)).order_by(callbacks.c.due_at, callbacks.c.id).limit(limit)
            )
            return [Callback(**row._mapping) for row in rows]

    async def next_due(self) -> datetime | None:
        """When the soonest scheduled try is due."""
        async with self.engine.connect() as conn:
            found = await conn.execute(select(func.min(callbacks.c.due_at)).where(callbacks.c.state == SCHEDULED))
            return found.scalar_one_or_none()

    async def take(self, callback_id: int, now: datetime, lease: timedelta) -> Taken | None:
        """Take the next try by a lease; None when another replica has it (or it is no longer due)."""
        token = secrets.token_hex(16)
        async with self.engine.begin() as conn:
            lost = and_(callbacks.c.state == CALLING, callbacks.c.call_sid.is_(None), callbacks.c.lease_until <= now)
            # A try whose replica died before placing it is taken again as the same try.
            again = await conn.execute(
                update(callbacks)
                .where(callbacks.c.id == callback_id, lost)
                .values(lease_until=now + lease, lease_token=token)
            )
            if again.rowcount != 1:
                fresh = await conn.execute(
                    update(callbacks)
                    .where(callbacks.c.id == callback_id, callbacks.c.state == SCHEDULED, callbacks.c.due_at <= now)
                    .values(
                        state=CALLING,
                        attempts=callbacks.c.attempts + 1,
                        call_sid=None,
                        lease_until=now + lease,
                        lease_token=token,
                    )
                )
                if fresh.rowcount != 1:
                    return None
            row = (
                await conn.execute(
                    select(*_COLUMNS, messages.c.department)
                    .join(messages, messages.c.id == callbacks.c.message_id)
                    .where(callbacks.c.id == callback_id)
                )
            ).one()
        fields = dict(row._mapping)
        department = fields.pop("department")
        return Taken(Callback(**fields), department, token)

    async def placed(self, taken: Taken, call_sid: str, now: datetime) -> None:
        """Twilio accepted the call: the try is placed (the lease is no longer needed)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(callbacks)
                .where(callbacks.c.id == taken.callback.id, callbacks.c.lease_token == taken.token)
                .values(call_sid=call_sid, placed_at=now, lease_until=None, lease_token=None)
            )

    async def release(self, taken: Taken, due_at: datetime) -> None:
        """Give a try back unplaced (the rules do not allow it now, or no line is free): scheduled
        for `due_at`, and not counted."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(callbacks)
                .where(callbacks.c.id == taken.callback.id, callbacks.c.lease_token == taken.token)
                .values(
                    state=SCHEDULED,
                    due_at=due_at,
                    attempts=callbacks.c.attempts - 1,
                    lease_until=None,
                    lease_token=None,
                )
            )

    async def close(self, callback_id: int, state: str, now: datetime, detail: str | None = None) -> None:
        """Done without another try: do not call, or not callable (with why)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(callbacks)
                .where(callbacks.c.id == callback_id, callbacks.c.state.in_(OPEN))
                .values(state=state, detail=(detail or "")[:DETAIL_CHARS] or None, due_at=None, done_at=now,
                        lease_until=None, lease_token=None)
            )  # fmt: skip

    # --- Twilio's side of a try -------------------------------------------------------------------

    async def current(self, callback_id: int, attempt: int) -> Callback | None:
        """The call-back, if `attempt` is its latest try."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(*_COLUMNS).where(callbacks.c.id == callback_id, callbacks.c.attempts == attempt)
                )
            ).one_or_none()
        return Callback(**row._mapping) if row is not None else None

    async def target(self, callback_id: int) -> Target | None:
        """Whom the call-back calls, and what for (its message)."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        callbacks.c.number, callbacks.c.message_id, messages.c.name, messages.c.message,
                        messages.c.department,
                    )
                    .join(messages, messages.c.id == callbacks.c.message_id)
                    .where(callbacks.c.id == callback_id)
                )
            ).one_or_none()  # fmt: skip
        return Target(*row) if row is not None else None

    async def seen(self, callback_id: int, attempt: int, call_sid: str) -> None:
        """Twilio reports the try's call: it was placed, even if the replica that placed it died before
        it could say so."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(callbacks)
                .where(callbacks.c.id == callback_id, callbacks.c.attempts == attempt, callbacks.c.call_sid.is_(None))
                .values(call_sid=call_sid, lease_until=None, lease_token=None)
            )

    async def answered(
        self, callback_id: int, attempt: int, state: str, now: datetime, detail: str | None = None
    ) -> bool:
        """The try was answered: reached (a person), voicemail, or not callable (a fax). True the first time."""
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(callbacks)
                .where(callbacks.c.id == callback_id, callbacks.c.attempts == attempt, callbacks.c.state == CALLING)
                .values(state=state, detail=detail, done_at=now, due_at=None, lease_until=None, lease_token=None)
            )
        return done.rowcount == 1

    async def unanswered(
        self, callback_id: int, attempt: int, result: str, next_at: datetime | None, max_attempts: int, now: datetime
    ) -> str | None:
        """Busy, no answer or failed: another try at `next_at`, or no_answer once the tries are used
        up (or no moment is allowed). Returns the new state; None for an older try or a settled one."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(callbacks.c.attempts).where(
                        callbacks.c.id == callback_id, callbacks.c.attempts == attempt, callbacks.c.state == CALLING
                    )
                )
            ).one_or_none()
            if row is None:
                return None
            last = row.attempts >= max_attempts or next_at is None
            values: dict[str, Any] = (
                {"state": NO_ANSWER, "due_at": None, "done_at": now}
                if last
                else {"state": SCHEDULED, "due_at": next_at}
            )
            await conn.execute(
                update(callbacks)
                .where(callbacks.c.id == callback_id, callbacks.c.attempts == attempt, callbacks.c.state == CALLING)
                .values(last_result=result, lease_until=None, lease_token=None, **values)
            )
        return values["state"]

    # --- the do-not-call list -------------------------------------------------------------------

    async def do_not_call(self, number: str, source: str, now: datetime) -> int:
        """Add the number; every open call-back to it is closed as do-not-call. Returns how many."""
        async with self.engine.begin() as conn:
            statement = upsert_into(conn, do_not_call).values(number=number, added_at=now, source=source[:80])
            await conn.execute(statement.on_conflict_do_nothing(index_elements=[do_not_call.c.number]))
            closed = await conn.execute(
                update(callbacks)
                .where(callbacks.c.number == number, callbacks.c.state.in_(OPEN), callbacks.c.call_sid.is_(None))
                .values(state=DO_NOT_CALL, due_at=None, done_at=now, lease_until=None, lease_token=None)
            )
        return closed.rowcount

    async def listed(self, number: str) -> bool:
        async with self.engine.connect() as conn:
            return await _listed(conn, number)

    async def do_not_call_list(self) -> list[tuple[str, datetime, str]]:
        """(number, added at, source), newest first."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(do_not_call.c.number, do_not_call.c.added_at, do_not_call.c.source).order_by(
                    do_not_call.c.added_at.desc(), do_not_call.c.number
                )
            )
            return [(r.number, r.added_at, r.source) for r in rows]

    async def remove_do_not_call(self, number: str) -> bool:
        async with self.engine.begin() as conn:
            done = await conn.execute(delete(do_not_call).where(do_not_call.c.number == number))
        return bool(done.rowcount)


def _claimable(now: datetime) -> Any:
    return or_(
        and_(callbacks.c.state == SCHEDULED, callbacks.c.due_at <= now),
        and_(callbacks.c.state == CALLING, callbacks.c.call_sid.is_(None), callbacks.c.lease_until <= now),
    )


async def _by_message(conn: AsyncConnection, message_id: int) -> Callback | None:
    row = (await conn.execute(select(*_COLUMNS).where(callbacks.c.message_id == message_id))).one_or_none()
    return Callback(**row._mapping) if row is not None else None


async def _listed(conn: AsyncConnection, number: str) -> bool:
    found = await conn.execute(select(do_not_call.c.number).where(do_not_call.c.number == number))
    return found.one_or_none() is not None


async def schedule_in(
    conn: AsyncConnection,
    message_id: int,
    number: str,
    department: str | None,
    not_before: datetime,
    plan: Planning,
    now: datetime,
) -> Callback:
    """Schedule a message's call-back in the caller's transaction (a new message's, with CALLBACK=auto)."""
    existing = await _by_message(conn, message_id)
    if existing is not None and existing.state in OPEN:
        return existing
    decided = Plan(DO_NOT_CALL) if await _listed(conn, number) else plan(number, department, max(not_before, now))
    done = decided.state != SCHEDULED
    values: dict[str, Any] = {
        "number": number,
        "state": decided.state,
        "requested_at": now,
        "not_before": not_before,
        "due_at": decided.due_at,
        "attempts": 0,
        "last_result": None,
        "detail": (decided.detail or "")[:DETAIL_CHARS] or None,
        "call_sid": None,
        "lease_until": None,
        "lease_token": None,
        "placed_at": None,
        "done_at": now if done else None,
    }
    if existing is None:
        try:
            async with conn.begin_nested():
                await conn.execute(callbacks.insert().values(message_id=message_id, **values))
        except IntegrityError:  # scheduled by someone else just now
            pass
    else:
        await conn.execute(
            update(callbacks).where(callbacks.c.id == existing.id, callbacks.c.state.not_in(OPEN)).values(**values)
        )
    found = await _by_message(conn, message_id)
    assert found is not None
    return found
