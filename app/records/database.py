"""Opening the records store: the engine, the schema upgraded in place, and old messages carried over.

SQLite under DATA_DIR by default (WAL, so the review page reads while the server writes);
PostgreSQL when DATABASE_URL says so, shared by every replica. Every await on the database is
bounded: a store that has gone away costs a call nothing but its records' wait in the buffer.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, insert, make_url, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.private_files import private_file
from app.records.schema import messages
from app.settings import Settings

log = logging.getLogger("switchboard.records")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
LEGACY_MESSAGES = "messages.sqlite3"
CONNECT_TIMEOUT_S = 5.0
STATEMENT_TIMEOUT_S = 10.0


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.records_url
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            path = Path(database)
            for existing in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                if existing == path or existing.exists():
                    private_file(existing)  # SQLite makes its -wal and -shm like the database file
        engine = create_async_engine(url, connect_args={"timeout": CONNECT_TIMEOUT_S})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url,
        pool_pre_ping=True,  # a PostgreSQL that restarted leaves dead connections in the pool
        pool_size=5,
        max_overflow=5,
        pool_timeout=CONNECT_TIMEOUT_S,
        connect_args={"timeout": CONNECT_TIMEOUT_S, "command_timeout": STATEMENT_TIMEOUT_S},
    )


def _sqlite_pragmas(connection: Any, _record: object) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(CONNECT_TIMEOUT_S * 1000)}")
    cursor.execute("PRAGMA secure_delete=ON")  # what retention deletes is overwritten, not left in free pages
    cursor.close()


def _upgrade(connection: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Create or upgrade the schema in place (idempotent; replicas starting together run it once)."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade, revision)


async def bring_up_to_date(engine: AsyncEngine, data_dir: Path) -> None:
    """The schema at head, and the messages of an old DATA_DIR/messages.sqlite3 carried over."""
    await upgrade(engine)
    await carry_over_messages(engine, data_dir / LEGACY_MESSAGES)


async def carry_over_messages(engine: AsyncEngine, legacy: Path) -> int:
    """Copy the messages of the store before this one (one SQLite file) into the records store.

    Each keeps its old id as `legacy_id`, so a copy interrupted half way is finished, not doubled,
    by the next start; once every row is in, the file is renamed aside (kept, never deleted).
    """
    rows = await asyncio.to_thread(_read_legacy, legacy)
    if rows is None:
        return 0
    async with engine.begin() as connection:
        present = set(
            (await connection.execute(select(messages.c.legacy_id).where(messages.c.legacy_id.is_not(None)))).scalars()
        )
        fresh = [row for row in rows if row["legacy_id"] not in present]
        if fresh:
            await connection.execute(insert(messages), fresh)
    await asyncio.to_thread(legacy.rename, legacy.with_name(legacy.name + ".carried-over"))
    log.info("carried %d message(s) over from %s into the records store", len(fresh), legacy)
    return len(fresh)


def _read_legacy(path: Path) -> list[dict[str, Any]] | None:
    if not path.is_file():
        return None
    with closing(sqlite3.connect(path, timeout=CONNECT_TIMEOUT_S)) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM messages ORDER BY id").fetchall()
    return [
        {
            "legacy_id": row["id"],
            "created_at": _utc(row["created_at"]),
            "name": row["name"],
            "callback_number": row["callback_number"],
            "message": row["message"],
            "call_sid": row["call_sid"],
            "caller": row["caller"],
            "conversation_id": row["conversation_id"],
        }
        for row in rows
    ]


def _utc(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when
