"""The outbox: what the team is told (webhooks, e-mail), kept in the records store until it is sent.

An event is written in the same transaction as what it announces (a message, a new gap, a call's
end, its analysis), one row per destination, so a crash between "saved" and "sent" loses nothing.

Each destination is sent in id order, one event at a time. A delivery worker takes the destination's
oldest pending row by a lease: an UPDATE that only succeeds while no unexpired lease is on the row,
so among several replicas exactly one sends it (PostgreSQL re-checks the condition on the locked
row; SQLite runs one writer at a time). The lease outlasts the bounded send; a worker killed while
sending leaves a lease that expires, and the event is sent again, with the same id.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.records.schema import outbox, upsert_into
from app.settings import Settings

MESSAGE_CREATED = "message.created"
CALL_ENDED = "call.ended"
GAP_CREATED = "gap.created"
CALL_ANALYZED = "call.analyzed"
RETRY_FOR = timedelta(days=1)
# call.ended waits this long before it is first sent, and is composed from the records then: a turn
# another replica was still writing when the call ended is counted.
CALL_ENDED_GRACE = timedelta(seconds=5)
ERROR_CHARS = 200


@dataclass(frozen=True)
class Destination:
    """A webhook URL, or `mailto:` the addresses of NOTIFY_EMAIL_TO (messages only)."""

    address: str

    @property
    def kind(self) -> str:
        return "email" if self.address.startswith("mailto:") else "webhook"

    def takes(self, event_type: str) -> bool:
        return self.kind == "webhook" or event_type == MESSAGE_CREATED

    @property
    def shown(self) -> str:
        """For people: a URL without its path or query (which often carry a token)."""
        if self.kind == "email":
            return self.address
        parts = urlsplit(self.address)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}/…"


def destinations(settings: Settings) -> list[Destination]:
    found = [Destination(url) for url in settings.webhook_urls]
    if settings.email_enabled:
        found.append(Destination("mailto:" + ",".join(settings.notify_email_to)))
    return found


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def call_ended_event_id(call_sid: str) -> str:
    """A call ends once: however often its end is written, it is one event."""
    return "evt_" + hashlib.sha256(f"{CALL_ENDED}:{call_sid}".encode()).hexdigest()[:32]


class Outbox:
    """Where events are announced, for one app; tells this replica's workers when one is committed."""

    def __init__(self, to: list[Destination], public_url: str | None = None) -> None:
        self.destinations = to
        self.public_url = public_url
        self.retry_for = RETRY_FOR
        self.call_ended_grace = CALL_ENDED_GRACE
        self._listeners: list[asyncio.Event] = []
        self._announced = False

    def link(self, path: str) -> str | None:
        """A link to the review page, when PUBLIC_URL says where it is."""
        return f"{self.public_url}{path}" if self.public_url else None

    async def announce(
        self,
        conn: AsyncConnection,
        event_type: str,
        data: dict[str, Any] | None,
        at: datetime,
        *,
        call_sid: str | None = None,
        event_id: str | None = None,
        not_before: datetime | None = None,
    ) -> None:
        """Add the event for every destination that takes it, in the caller's transaction."""
        event_id = event_id or new_event_id()
        rows = [
            {
                "event_id": event_id,
                "type": event_type,
                "created_at": at,
                "destination": d.address,
                "call_sid": call_sid,
                "data": data,
                "next_attempt_at": not_before or at,
                "retry_until": at + self.retry_for,
            }
            for d in self.destinations
            if d.takes(event_type)
        ]
        if not rows:
            return
        unique = [outbox.c.event_id, outbox.c.destination]
        statement = upsert_into(conn, outbox).on_conflict_do_nothing(index_elements=unique)
        await conn.execute(statement, rows)
        self._announced = True

    def listen(self) -> asyncio.Event:
        """An event set whenever this replica commits an announcement."""
        woken = asyncio.Event()
        self._listeners.append(woken)
        return woken

    def committed(self) -> None:
        """Called after a transaction that may have announced something has committed."""
        if self._announced:
            self._announced = False
            self.wake()

    def wake(self) -> None:
        for woken in self._listeners:
            woken.set()


# --- the delivery side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leased:
    """An outbox row a worker holds the lease on."""

    id: int
    event_id: str
    type: str
    created_at: datetime
    destination: str
    call_sid: str | None
    data: dict[str, Any] | None
    attempts: int
    retry_until: datetime
    token: str


async def lease_next(
    conn: AsyncConnection, destination: str, now: datetime, lease: timedelta
) -> tuple[Leased | None, datetime | None]:
    """The destination's oldest pending event, leased to the caller; else (None, when to look again),
    (None, None) when nothing is pending."""
    head = (
        await conn.execute(
            select(outbox.c.id, outbox.c.next_attempt_at, outbox.c.lease_until)
            .where(outbox.c.destination == destination, outbox.c.state == "pending")
            .order_by(outbox.c.id)
            .limit(1)
        )
    ).one_or_none()
    if head is None:
        return None, None
    if head.next_attempt_at > now or (head.lease_until is not None and head.lease_until > now):
        return None, max(head.next_attempt_at, head.lease_until or head.next_attempt_at)
    token = secrets.token_hex(16)
    taken = await conn.execute(
        update(outbox)
        .where(
            outbox.c.id == head.id,
            outbox.c.state == "pending",
            outbox.c.next_attempt_at <= now,
            or_(outbox.c.lease_until.is_(None), outbox.c.lease_until <= now),
        )
        .values(lease_until=now + lease, lease_token=token)
    )
    if taken.rowcount != 1:
        return None, now  # another worker was quicker: look again at once
    row = (
        await conn.execute(
            select(
                outbox.c.id, outbox.c.event_id, outbox.c.type, outbox.c.created_at, outbox.c.destination,
                outbox.c.call_sid, outbox.c.data, outbox.c.attempts, outbox.c.retry_until,
            ).where(outbox.c.id == head.id)
        )
    ).one()  # fmt: skip
    return Leased(*row, token=token), None


async def fill_data(conn: AsyncConnection, event_id: str, data: dict[str, Any]) -> None:
    """Fix an event's data for every destination the first time it is sent, so retries send the same."""
    await conn.execute(update(outbox).where(outbox.c.event_id == event_id, outbox.c.data.is_(None)).values(data=data))


async def settle(
    conn: AsyncConnection, row: Leased, now: datetime, error: str | None, retry_in: timedelta
) -> str | None:
    """Record how a send went: delivered, to be retried after `retry_in`, or dead (past its retry window).
    Returns the new state, or None when the lease had been lost (another worker owns the row now)."""
    if error is None:
        values: dict[str, Any] = {"state": "delivered", "done_at": now, "last_error": None}
    elif now >= row.retry_until:
        values = {"state": "dead", "done_at": now, "last_error": error[:ERROR_CHARS]}
    else:
        values = {"next_attempt_at": now + retry_in, "last_error": error[:ERROR_CHARS]}
    done = await conn.execute(
        update(outbox)
        .where(outbox.c.id == row.id, outbox.c.lease_token == row.token)
        .values(attempts=outbox.c.attempts + 1, lease_until=None, lease_token=None, **values)
    )
    if done.rowcount != 1:
        return None
    return values.get("state", "pending")


# --- the review page ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadEvent:
    id: int
    event_id: str
    type: str
    created_at: datetime
    destination: Destination
    call_sid: str | None
    attempts: int
    last_error: str | None
    done_at: datetime


@dataclass(frozen=True)
class Waiting:
    destination: Destination
    pending: int
    oldest: datetime
    attempts: int  # of the oldest, which the others wait behind
    last_error: str | None


async def dead_events(conn: AsyncConnection, limit: int, before_id: int | None = None) -> list[DeadEvent]:
    """Newest first, `limit` at a time."""
    query = (
        select(
            outbox.c.id, outbox.c.event_id, outbox.c.type, outbox.c.created_at, outbox.c.destination,
            outbox.c.call_sid, outbox.c.attempts, outbox.c.last_error, outbox.c.done_at,
        )
        .where(outbox.c.state == "dead")
        .order_by(outbox.c.id.desc())
        .limit(limit)
    )  # fmt: skip
    if before_id is not None:
        query = query.where(outbox.c.id < before_id)
    rows = await conn.execute(query)
    return [DeadEvent(r.id, r.event_id, r.type, r.created_at, Destination(r.destination), r.call_sid,
                      r.attempts, r.last_error, r.done_at) for r in rows]  # fmt: skip


async def waiting(conn: AsyncConnection) -> list[Waiting]:
    """Per destination with pending events: how many, and the oldest one's tries so far."""
    counts = (
        select(outbox.c.destination, func.count().label("n"), func.min(outbox.c.id).label("head"))
        .where(outbox.c.state == "pending")
        .group_by(outbox.c.destination)
        .subquery()
    )
    rows = await conn.execute(
        select(counts.c.destination, counts.c.n, outbox.c.created_at, outbox.c.attempts, outbox.c.last_error)
        .join(outbox, outbox.c.id == counts.c.head)
        .order_by(counts.c.destination)
    )
    return [Waiting(Destination(r.destination), r.n, r.created_at, r.attempts, r.last_error) for r in rows]


async def count_dead(conn: AsyncConnection) -> int:
    return (await conn.execute(select(func.count()).select_from(outbox).where(outbox.c.state == "dead"))).scalar_one()


async def send_again(conn: AsyncConnection, now: datetime, retry_for: timedelta, row_id: int | None = None) -> int:
    """Put a dead event (or every dead one) back in line, with a fresh retry window; it keeps its id and
    its place (events are sent in id order). Returns how many."""
    query = update(outbox).where(outbox.c.state == "dead")
    if row_id is not None:
        query = query.where(outbox.c.id == row_id)
    done = await conn.execute(
        query.values(state="pending", next_attempt_at=now, retry_until=now + retry_for, done_at=None, attempts=0)
    )
    return done.rowcount


async def purge_outbox(conn: AsyncConnection, cutoff: datetime) -> int:
    """Delivered and dead events once past the window; pending ones too once their retries are long over
    (a destination taken out of the settings leaves its events behind)."""
    done = await conn.execute(
        delete(outbox).where(
            or_(
                and_(outbox.c.done_at.is_not(None), outbox.c.done_at < cutoff),
                and_(outbox.c.state == "pending", outbox.c.retry_until < cutoff),
            )
        )
    )
    return done.rowcount
