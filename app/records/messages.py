"""Messages callers leave with the agent, in the records store.

Each message is committed before the tool answers the model, so a caller who hangs up straight
after leaving it loses nothing; if it cannot be written, the agent is told so (and offers a
transfer) rather than promising a call back. Its name and text are redacted like every record. Its
`message.created` event goes into the outbox in the same transaction.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.records.outbox import MESSAGE_CREATED, Outbox
from app.records.redact import redact
from app.records.schema import calls, messages
from app.records.writer import upsert_call
from app.settings import E164

MAX_MESSAGE_CHARS = 500
MAX_NAME_CHARS = 100
DEFAULT_REGION = "US"
WRITE_TIMEOUT_S = 5.0
_DURATION = re.compile(r"^(\d{1,6})\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def normalise_number(text: str, region: str = DEFAULT_REGION) -> str | None:
    """The number in E.164 (+14155550100), or None when it is not a valid phone number."""
    try:
        number = phonenumbers.parse(text[:40], region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def spoken_digits(number: str) -> str:
    """+14155550123 as "4 1 5, 5 5 5, 0 1 2 3": read out digit by digit, in the usual groups."""
    parsed = phonenumbers.parse(number, DEFAULT_REGION)
    region = phonenumbers.region_code_for_number(parsed)
    style = (
        phonenumbers.PhoneNumberFormat.NATIONAL
        if region == DEFAULT_REGION
        else phonenumbers.PhoneNumberFormat.INTERNATIONAL
    )
    groups = re.findall(r"\d+", phonenumbers.format_number(parsed, style))
    return ", ".join(" ".join(group) for group in groups)


def caller_number(text: str) -> str | None:
    """A caller ID as +E.164 (Twilio sends it so), or None for anonymous, sip: or client: callers."""
    text = text.strip()
    if E164.match(text):
        return text
    return normalise_number(text) if text and text[0] in "+0123456789(" else None


def clean_text(text: str, limit: int) -> str:
    """One line of printable text, whitespace collapsed, at most `limit` characters."""
    printable = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    return " ".join(printable.split())[:limit]


@dataclass(frozen=True)
class Message:
    id: int
    created_at: datetime
    name: str
    callback_number: str
    message: str
    call_sid: str | None
    caller: str | None
    conversation_id: str | None
    department: str | None = None  # the department it is for, if any
    handled_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(timespec="seconds"),
            "name": self.name,
            "callback_number": self.callback_number,
            "message": self.message,
            "call_sid": self.call_sid,
            "caller": self.caller,
            "conversation_id": self.conversation_id,
            "department": self.department,
            "handled_at": self.handled_at.isoformat(timespec="seconds") if self.handled_at else None,
        }

    def announced(self) -> dict[str, Any]:
        """The data of its `message.created` event."""
        return {
            "message_id": self.id,
            "name": self.name,
            "callback_number": self.callback_number,
            "message": self.message,
            "department": self.department,
            "call_sid": self.call_sid,
            "left_at": self.created_at.isoformat(timespec="seconds"),
        }


_COLUMNS = [messages.c[name] for name in Message.__dataclass_fields__]
Then = Callable[[AsyncConnection, Message], Awaitable[object]]


class MessageStore:
    def __init__(self, engine: AsyncEngine, outbox: Outbox, count_on_calls: bool = True) -> None:
        """`count_on_calls`: count each message on its call's record (off when calls are not recorded:
        RECORD_CALLS=false keeps the message and nothing of the call)."""
        self.engine = engine
        self.outbox = outbox
        self.count_on_calls = count_on_calls

    async def add(
        self,
        *,
        name: str,
        callback_number: str,
        message: str,
        call_sid: str | None,
        caller: str | None,
        conversation_id: str | None,
        department: str | None = None,
        now: datetime | None = None,
        then: Then | None = None,
    ) -> Message:
        """Store one message and commit it before returning (raises if it cannot); `then` does more
        in the same transaction (schedules its call-back, with CALLBACK=auto)."""
        row = {
            "created_at": (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0),
            "name": redact(name),
            "callback_number": callback_number,
            "message": redact(message),
            "call_sid": call_sid,
            "caller": caller,
            "conversation_id": conversation_id,
            "department": department,
        }
        async with asyncio.timeout(WRITE_TIMEOUT_S), self.engine.begin() as conn:
            new_id = (await conn.execute(insert(messages).values(**row).returning(messages.c.id))).scalar_one()
            if call_sid is not None and self.count_on_calls:
                await upsert_call(conn, call_sid, {"messages": 1}, lambda _: {"messages": calls.c.messages + 1})
            saved = Message(new_id, **row)
            await self.outbox.announce(conn, MESSAGE_CREATED, saved.announced(), saved.created_at, call_sid=call_sid)
            if then is not None:
                await then(conn, saved)
        self.outbox.committed()
        return saved

    async def since(self, when: datetime | None = None, *, handled: bool | None = None) -> list[Message]:
        """Messages from `when` on, oldest first; `handled` False/True keeps only open/handled ones."""
        query = select(*_COLUMNS).order_by(messages.c.created_at, messages.c.id)
        if when is not None:
            query = query.where(messages.c.created_at >= when)
        if handled is not None:
            query = query.where(messages.c.handled_at.is_not(None) if handled else messages.c.handled_at.is_(None))
        async with self.engine.connect() as conn:
            return [Message(**row._mapping) for row in await conn.execute(query)]

    async def newest(self, limit: int, before_id: int | None = None) -> list[Message]:
        """Newest first, `limit` at a time, for the review page."""
        query = select(*_COLUMNS).order_by(messages.c.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(messages.c.id < before_id)
        async with self.engine.connect() as conn:
            return [Message(**row._mapping) for row in await conn.execute(query)]

    async def mark_handled(self, message_id: int, now: datetime | None = None) -> bool:
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(messages)
                .where(messages.c.id == message_id, messages.c.handled_at.is_(None))
                .values(handled_at=now or datetime.now(UTC))
            )
        return bool(done.rowcount)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`2024-05-01`, `2024-05-01T09:30` (UTC unless it says otherwise), or a duration: 30m, 12h, 7d, 2w."""
    text = text.strip()
    duration = _DURATION.match(text.lower())
    if duration:
        amount, unit = duration.groups()
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: give a date like 2024-05-01 or a duration like 12h or 7d") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
