"""The records store on SQLite and on a real PostgreSQL: calls and turns as they happen, knowledge
gaps, redaction, retention, schema upgrades, and records that wait while the store is away."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text

from app.knowledge.retrieval import Passage
from app.observability import Metrics
from app.records.database import create_engine, upgrade
from app.records.events import (
    CallAnswered,
    CallEnded,
    CallerLookedUp,
    CallReceived,
    CallRefused,
    TransferResult,
    TurnDone,
)
from app.records.queries import Cursor, get_call, list_calls, list_gaps, mark_gap_handled
from app.records.retention import purge
from app.records.schema import calls, gaps, messages, passages, turns
from app.records.store import RecordsStore
from app.settings import Settings
from tests.support.calls import sid
from tests.support.servers import postgres_server

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
CARD = "4111 1111 1111 1111"


def turn(call_sid: str | None, said: str, *, at: datetime = T0, unanswered: str | None = None, **kw: Any) -> TurnDone:
    values: dict[str, Any] = {
        "call_sid": call_sid,
        "conversation_id": kw.pop("conversation_id", None),
        "event_id": 1,
        "started_at": at,
        "caller_text": said,
        "agent_text": kw.pop("agent_text", "Here is what I found."),
        "interrupted": False,
        "outcome": "answered",
        "abstained": unanswered is not None,
        "fallback": None,
        "tools": [],
        "timings_ms": {"retrieval": 5.0, "llm_first_token": 210.0, "first_chunk": 230.0, "total": 900.0},
        "unanswered": unanswered,
    }
    values.update(kw)
    return TurnDone(**values)


@pytest.fixture
def records_settings(make_settings: Callable[..., Settings], records_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url=records_url, data_dir=tmp_path / "data")


@pytest.fixture
async def store(records_settings: Settings, encoder: Any) -> AsyncIterator[RecordsStore]:
    records = RecordsStore(records_settings, Metrics(), encoder.encode)
    await records.start()
    async with asyncio.timeout(30):
        await records.ready.wait()
    yield records
    await records.stop()


async def written(store: RecordsStore, *events: Any) -> None:
    for event in events:
        store.record(event)
    assert store.recorder is not None
    await store.recorder.flushed()


async def test_a_call_is_recorded_whatever_order_its_records_arrive_in(store: RecordsStore) -> None:
    call = sid(1)
    source = Passage("c1-abc", "billing/autopay.md", ("Billing", "Autopay"), "Autopay takes $5 off.", 0.71, 0.66)
    # The brain's turn is written before the bridge's replica records the call (another replica).
    await written(
        store,
        turn(call, "how much is the autopay discount?", at=T0 + timedelta(seconds=10), sources=(source,)),
        CallReceived(call, "+14155550100", T0),
        CallAnswered(call, "conv_1", T0 + timedelta(seconds=1), greeting="Thanks for calling."),
        turn(None, "and can I pay by card?", at=T0 + timedelta(seconds=20), conversation_id="conv_1"),
        TransferResult(call, "support", "connected", T0 + timedelta(seconds=30)),
        CallEnded(call, "caller_hung_up", "caller_hung_up", T0 + timedelta(seconds=40), 39.0),
    )
    async with store.engine.connect() as conn:
        detail = await get_call(conn, call)
    assert detail is not None
    row = detail.call
    assert row.started_at == T0 and row.caller == "+14155550100" and row.caller_masked == "+•••••••0100"
    assert row.outcome == "transferred" and row.ended_how == "transferred to support" and row.duration_s == 39.0
    assert row.turns == 2 and detail.greeting == "Thanks for calling."
    first, second = detail.turns
    assert first.caller_text == "how much is the autopay discount?"
    assert [(s.source, s.heading, s.text) for s in first.sources] == [
        ("billing/autopay.md", "Billing > Autopay", "Autopay takes $5 off.")
    ]
    assert first.timings_ms == {"retrieval": 5.0, "llm_first_token": 210.0, "first_chunk": 230.0, "total": 900.0}
    assert second.caller_text == "and can I pay by card?"  # bound to the call by its conversation id


async def test_paraphrases_of_an_unanswered_question_form_one_gap(store: RecordsStore) -> None:
    await written(
        store,
        turn(sid(1), "do you offer pet insurance?", unanswered="do you offer pet insurance?"),
        turn(sid(2), "can I buy insurance for my dog from you?", unanswered="can I buy insurance for my dog from you?"),
        turn(sid(3), "do you have a shop in Paris?", unanswered="do you have a shop in Paris?"),
        turn(sid(3), "how much is the autopay discount?"),
    )
    async with store.engine.connect() as conn:
        found = await list_gaps(conn)
    assert [(g.count, g.example, sorted(g.calls)) for g in found] == [
        (2, "do you offer pet insurance?", [sid(1), sid(2)]),
        (1, "do you have a shop in Paris?", [sid(3)]),
    ]


async def test_a_handled_gap_asked_again_opens_again(store: RecordsStore) -> None:
    await written(store, turn(sid(1), "q", unanswered="do you offer pet insurance?"))
    async with store.engine.begin() as conn:
        (gap,) = await list_gaps(conn)
        assert await mark_gap_handled(conn, gap.id)
    async with store.engine.connect() as conn:
        assert await list_gaps(conn) == []
        assert [g.id for g in await list_gaps(conn, handled=True)] == [gap.id]
    await written(store, turn(sid(2), "q", unanswered="is there insurance for pets?"))
    async with store.engine.connect() as conn:
        (again,) = await list_gaps(conn)
    assert again.id == gap.id and again.count == 2 and again.handled_at is None


async def test_secrets_a_caller_reads_out_are_redacted_before_they_are_stored(
    store: RecordsStore, records_settings: Settings
) -> None:
    said = f"my card number is {CARD} and the code on the back is 737"
    await written(
        store,
        turn(sid(1), said, agent_text=f"I can't take card numbers like {CARD} on the phone."),
        turn(sid(1), "pay with four one one one one one one one one one one one one one one one", unanswered=said),
    )
    await store.messages.add(
        name="Dana", callback_number="+14155550100", message=f"card {CARD}", call_sid=sid(1), caller=None,
        conversation_id=None,
    )  # fmt: skip
    async with store.engine.connect() as conn:
        stored = [
            *(await conn.execute(select(turns.c.caller_text, turns.c.agent_text))).all(),
            *(await conn.execute(select(gaps.c.example))).all(),
            *(await conn.execute(select(messages.c.message))).all(),
        ]
    flat = " ".join(value for row in stored for value in row)
    assert "4111" not in flat and "737" not in flat and "four one one" not in flat
    assert flat.count("[card number]") == 5 and "the code on the back is [redacted]" in flat
    if records_settings.records_url.startswith("sqlite"):
        await store.stop()  # checkpoint the WAL, then look at the bytes on disk
        path = Path(records_settings.records_url.removeprefix("sqlite+aiosqlite:///"))
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert b"4111" not in raw and b"1111 1111" not in raw


async def test_retention_deletes_exactly_what_is_older_than_the_window(store: RecordsStore) -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    old, recent = now - timedelta(days=30, seconds=1), now - timedelta(days=29, hours=23)
    source = Passage("c1-old", "a.md", ("A",), "old passage", 0.5, 0.5)
    await written(
        store,
        CallReceived(sid(1), None, old),
        CallerLookedUp(sid(1), "answered", {"name": "Dana"}, old),
        CallEnded(sid(1), "caller_hung_up", "caller_hung_up", old + timedelta(seconds=5), 5.0),
        turn(sid(1), "old question", at=old, sources=(source,)),
        CallReceived(sid(2), None, recent),
        CallerLookedUp(sid(2), "timeout", None, recent),
        CallEnded(sid(2), "caller_hung_up", "caller_hung_up", recent + timedelta(seconds=5), 5.0),
        turn(sid(2), "recent question", at=recent),
    )
    handled_old = await store.messages.add(
        name="A",
        callback_number="+14155550100",
        message="old",
        call_sid=None,
        caller=None,
        conversation_id=None,
        now=old,
    )
    open_old = await store.messages.add(
        name="B",
        callback_number="+14155550100",
        message="open",
        call_sid=None,
        caller=None,
        conversation_id=None,
        now=old,
    )
    await store.messages.mark_handled(handled_old.id, now=old)
    gone = await purge(store.engine, 30, now)
    assert gone == {
        "turns": 1, "calls": 1, "analyses": 1, "lookups": 1, "messages": 1, "gaps": 0, "passages": 1, "events": 0
    }  # fmt: skip
    async with store.engine.connect() as conn:
        assert (await conn.execute(select(calls.c.call_sid))).scalars().all() == [sid(2)]
        assert (await conn.execute(select(turns.c.caller_text))).scalars().all() == ["recent question"]
        assert (await conn.execute(select(messages.c.id))).scalars().all() == [open_old.id]
        assert (await conn.execute(select(func.count()).select_from(passages))).scalar_one() == 0
    assert not any((await purge(store.engine, 30, now)).values())


async def test_the_calls_list_pages_by_keyset_and_filters_by_outcome(store: RecordsStore) -> None:
    events: list[Any] = []
    for n in range(120):
        at = T0 + timedelta(minutes=n // 2)  # pairs share a start time: the id breaks the tie
        events += [CallReceived(sid(n), None, at), CallEnded(sid(n), "caller_hung_up", "caller_hung_up", at, 30.0)]
        if n % 10 == 0:
            events.append(CallRefused(sid(n), "busy", at))
    await written(store, *events)
    seen: list[str] = []
    after: Cursor | None = None
    async with store.engine.connect() as conn:
        while True:
            page, after = await list_calls(conn, after=after, limit=50)
            seen += [row.call_sid for row in page]
            if after is None:
                break
        busy, more = await list_calls(conn, outcome="busy")
        window, _ = await list_calls(conn, since=T0 + timedelta(minutes=10), until=T0 + timedelta(minutes=20))
    assert len(seen) == len(set(seen)) == 120
    started = {sid(n): T0 + timedelta(minutes=n // 2) for n in range(120)}
    assert [started[s] for s in seen] == sorted(started.values(), reverse=True)
    assert sorted(row.call_sid for row in busy) == sorted(sid(n) for n in range(0, 120, 10)) and more is None
    assert len(window) == 20


async def test_a_database_made_by_the_previous_schema_is_upgraded_in_place(
    records_settings: Settings, encoder: Any
) -> None:
    engine = create_engine(records_settings)
    await upgrade(engine, "0001")
    async with engine.begin() as conn:
        await conn.execute(insert(calls).values(call_sid=sid(7), started_at=T0, caller="+14155550100", turns=1))
        await conn.execute(
            insert(turns).values(
                call_sid=sid(7), started_at=T0, caller_text="hello", agent_text="hi", outcome="answered"
            )
        )
        await conn.execute(
            insert(messages).values(created_at=T0, name="Lee", callback_number="+12127365000", message="Hi.")
        )
    await engine.dispose()
    store = RecordsStore(records_settings, Metrics(), encoder.encode)
    await store.start()
    try:
        async with asyncio.timeout(30):
            await store.ready.wait()
        async with store.engine.connect() as conn:
            detail = await get_call(conn, sid(7))
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
        assert detail is not None and [t.caller_text for t in detail.turns] == ["hello"]
        assert [m.name for m in await store.messages.since()] == ["Lee"]
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        from app.records.database import MIGRATIONS

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        assert version == ScriptDirectory.from_config(config).get_current_head()
    finally:
        await store.stop()


async def test_the_migrations_make_exactly_the_schema_the_code_uses(records_settings: Settings) -> None:
    """A revision must change schema.py and the migrations alike, or a store made by them differs."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.records.schema import metadata

    engine = create_engine(records_settings)
    try:
        await upgrade(engine)
        async with engine.connect() as conn:
            differences = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
    finally:
        await engine.dispose()
    assert differences == []


async def test_messages_from_the_old_messages_file_are_carried_over_once(
    records_settings: Settings, encoder: Any
) -> None:
    data = records_settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(data / "messages.sqlite3") as old:
        old.executescript(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, name TEXT NOT NULL,"
            " callback_number TEXT NOT NULL, message TEXT NOT NULL, call_sid TEXT, caller TEXT, conversation_id TEXT);"
            "INSERT INTO messages VALUES (1, '2026-11-01T10:00:00+00:00', 'Dana', '+14155550100', 'About my bill.',"
            " 'CA" + "a" * 32 + "', '+14155550199', 'conv_1');"
            "INSERT INTO messages VALUES (2, '2026-11-02T11:00:00+00:00', 'Lee', '+12127365000', 'Hi.',"
            " NULL, NULL, NULL);"
        )
    for _ in range(2):  # a second start finds the file moved aside and changes nothing
        store = RecordsStore(records_settings, Metrics(), encoder.encode)
        await store.start()
        try:
            async with asyncio.timeout(30):
                await store.ready.wait()
            found = await store.messages.since()
        finally:
            await store.stop()
        assert [(m.name, m.message, m.created_at) for m in found] == [
            ("Dana", "About my bill.", datetime(2026, 11, 1, 10, tzinfo=UTC)),
            ("Lee", "Hi.", datetime(2026, 11, 2, 11, tzinfo=UTC)),
        ]
    assert not (data / "messages.sqlite3").exists() and (data / "messages.sqlite3.carried-over").exists()


async def test_a_message_is_committed_before_add_returns_and_can_be_marked_handled(store: RecordsStore) -> None:
    saved = await store.messages.add(
        name="Dana Smith", callback_number="+14155550100", message="Please call me back.", call_sid=sid(1),
        caller="+14155550199", conversation_id="conv_1",
    )  # fmt: skip
    other = create_engine(store.settings)  # another connection, as another process would see it
    try:
        async with other.connect() as conn:
            row = (await conn.execute(select(messages.c.name, messages.c.call_sid))).one()
            call_messages = (await conn.execute(select(calls.c.messages).where(calls.c.call_sid == sid(1)))).scalar()
    finally:
        await other.dispose()
    assert tuple(row) == ("Dana Smith", sid(1)) and call_messages == 1
    assert await store.messages.mark_handled(saved.id) and not await store.messages.mark_handled(saved.id)
    (handled,) = await store.messages.since(handled=True)
    assert handled.id == saved.id and await store.messages.since(handled=False) == []


async def test_records_wait_while_postgresql_is_away_and_arrive_when_it_returns(
    make_settings: Callable[..., Settings], encoder: Any, tmp_path: Path
) -> None:
    with postgres_server() as server:
        settings = make_settings(database_url=server.create_database("away"), data_dir=tmp_path)
        store = RecordsStore(settings, Metrics(), encoder.encode)
        await store.start()
        try:
            async with asyncio.timeout(30):
                await store.ready.wait()
            await written(store, CallReceived(sid(1), None, T0))
            await asyncio.to_thread(server.stop)
            for n in range(2, 6):
                store.record(CallReceived(sid(n), None, T0))
            store.record(turn(sid(2), "while the database was away", unanswered="do you offer pet insurance?"))
            with pytest.raises(OSError):  # the store is unreachable: the message is not saved (the caller is told)
                await store.messages.add(
                    name="A", callback_number="+14155550100", message="m", call_sid=None, caller=None,
                    conversation_id=None,
                )  # fmt: skip
            assert store.recorder is not None and store.recorder.pending == 5
            await asyncio.to_thread(server.start)
            await store.recorder.flushed(timeout=60)
            errors = store.metrics.registry.get_sample_value("switchboard_records_write_errors_total") or 0
            async with store.engine.connect() as conn:
                sids = (await conn.execute(select(calls.c.call_sid).order_by(calls.c.call_sid))).scalars().all()
                gap_count = (await conn.execute(select(func.count()).select_from(gaps))).scalar_one()
            assert sids == [sid(n) for n in range(1, 6)] and gap_count == 1
            assert errors >= 1
        finally:
            await store.stop()


async def test_past_its_bound_the_buffer_drops_and_counts(
    make_settings: Callable[..., Settings], tmp_path: Path, refused: str
) -> None:
    # A store that is never reachable: nothing is written, the buffer fills, the rest is counted.
    settings = make_settings(database_url=f"postgresql://nobody@{refused}/none", data_dir=tmp_path)
    store = RecordsStore(settings, Metrics())
    assert store.recorder is not None
    store.recorder.capacity = 10
    await store.start()
    try:
        for n in range(25):
            store.record(CallReceived(sid(n), None, T0))
        dropped = store.metrics.registry.get_sample_value(
            "switchboard_records_dropped_total", {"reason": "buffer_full"}
        )
        assert store.recorder.pending == 10 and dropped == 15
    finally:
        await store.stop()
    assert store.metrics.registry.get_sample_value("switchboard_records_dropped_total", {"reason": "shutdown"}) == 10
