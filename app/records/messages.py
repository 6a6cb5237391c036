"""Messages callers leave with the agent: one SQLite file under DATA_DIR.

Each message is committed before the tool answers the model, so a caller who hangs up straight
after leaving it loses nothing. `python -m app messages [--since ...] [--json]` lists them.
"""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import unicodedata
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

import phonenumbers

DB_NAME = "messages.sqlite3"
MAX_MESSAGE_CHARS = 500
MAX_NAME_CHARS = 100
DEFAULT_REGION = "US"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    name TEXT NOT NULL,
    callback_number TEXT NOT NULL,
    message TEXT NOT NULL,
    call_sid TEXT,
    caller TEXT,
    conversation_id TEXT
);
CREATE INDEX IF NOT EXISTS messages_created_at ON messages (created_at);
"""
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


def clean_text(text: str, limit: int) -> str:
    """One line of printable text, whitespace collapsed, at most `limit` characters."""
    printable = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    return " ".join(printable.split())[:limit]


@dataclass(frozen=True)
class Message:
    id: int
    created_at: str  # ISO 8601, UTC
    name: str
    callback_number: str
    message: str
    call_sid: str | None
    caller: str | None
    conversation_id: str | None


class MessageStore:
    """Writes are short and rare: one connection per operation, run in a thread by the caller."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / DB_NAME

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=5.0)) as db:
            db.row_factory = sqlite3.Row
            yield db

    def open(self) -> None:
        """Create the file and table if needed (raises OSError / sqlite3.Error if it cannot)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.commit()

    def add(
        self,
        *,
        name: str,
        callback_number: str,
        message: str,
        call_sid: str | None,
        caller: str | None,
        conversation_id: str | None,
        now: datetime | None = None,
    ) -> Message:
        """Store one message and commit it before returning."""
        created = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
        row = (created, name, callback_number, message, call_sid, caller, conversation_id)
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO messages (created_at, name, callback_number, message, call_sid, caller, conversation_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            db.commit()
            assert cursor.lastrowid is not None
            return Message(cursor.lastrowid, *row)

    def since(self, when: datetime | None = None) -> list[Message]:
        if not self.path.exists():
            return []
        after = (when or datetime.min.replace(tzinfo=UTC)).astimezone(UTC).isoformat(timespec="seconds")
        with self._connect() as db:
            rows = db.execute("SELECT * FROM messages WHERE created_at >= ? ORDER BY created_at, id", (after,))
            return [Message(**dict(row)) for row in rows]


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


def list_messages(data_dir: Path, since: str | None, as_json: bool, out: TextIO) -> int:
    """`python -m app messages`: print the messages, oldest first. Returns the exit code."""
    try:
        when = parse_since(since) if since else None
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    messages = MessageStore(data_dir).since(when)
    if as_json:
        json.dump([asdict(m) for m in messages], out, indent=2)
        out.write("\n")
        return 0
    if not messages:
        print("No messages" + (f" since {when.isoformat(timespec='minutes')}" if when else "") + ".", file=out)
    for m in messages:
        print(
            f"{m.created_at}  {m.name}  {m.callback_number}  (call {m.call_sid or '-'}, from {m.caller or '-'})",
            file=out,
        )
        print(f"    {m.message}", file=out)
    return 0
