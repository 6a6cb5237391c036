"""Records figures for `make bench`.

1. Brain overhead at 20 conversations with recording on and off, in the same run (bar: the p50s at
   most 1 ms apart). Same load as `bench_brain.py`: its index, its fake model, its server process.
2. The review page with 100,000 recorded calls in the store (three turns each, two passages read per
   turn): the calls list (first page, a page deep in the list, a rare outcome), a call page, the gaps
   and the overview, each timed at the client over loopback, so the figures over-state server time
   (bar: p95 ≤ 100 ms for the calls page and a call page). SQLite, and PostgreSQL when installed.

The seeded SQLite store is kept under data/bench/ and reused by later runs.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np

from app.records.database import create_engine, upgrade
from app.settings import Settings
from tests.bench.bench_brain import compare_overhead
from tests.bench.server_process import app_process

CALLS = 100_000
TURNS_PER_CALL = 3
SOURCES_PER_TURN = 2
PASSAGES = 1_000
GAPS = 300
SAMPLES = 200
PASSWORD = "bench-admin-password"
START = datetime(2026, 11, 1, tzinfo=UTC)
OUTCOME_EVERY = {"transferred": 7, "message": 23, "fallback": 97, "busy": 211}


def _percentiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return f"p50 {q[49] * 1000:6.1f} ms  p95 {q[94] * 1000:6.1f} ms  (n={len(values)})"


def test_recording_on_vs_off(tmp_path: Path) -> None:
    compare_overhead(tmp_path, "recording", {"off": {"RECORD_CALLS": "false"}, "on": {"RECORD_CALLS": "true"}})


# --- the review page at 100,000 calls ---------------------------------------------------------


def _rows(seed: int = 0) -> Iterator[tuple[str, list[tuple[object, ...]]]]:
    """(table, rows) batches of a realistic store: calls spread over 30 days, newest last."""
    rng = random.Random(seed)
    yield "passages", [(f"p{n}", f"docs/page-{n % 97}.md", f'["Page {n % 97}", "Section {n}"]', "Some text. " * 40)
                       for n in range(PASSAGES)]  # fmt: skip
    now = START
    vector = np.ones(384, dtype=np.float32).tobytes()
    yield "gaps", [(n + 1, f"unanswered question {n}", rng.randint(1, 9), now, now, None, vector) for n in range(GAPS)]
    calls, turns, sources = [], [], []
    turn_id = 0
    for n in range(CALLS):
        started = START + timedelta(seconds=n * 30 * 86400 / CALLS)
        sid = f"CA{n:032x}"
        outcome = next((o for o, every in OUTCOME_EVERY.items() if n % every == 0), None)
        calls.append((
            n + 1, sid, f"conv_{n}", f"+1415555{n % 10000:04d}", started, started + timedelta(seconds=1),
            started + timedelta(seconds=95), 95.0, "busy" if outcome == "busy" else
            "fallback" if outcome == "fallback" else "caller_hung_up", None,
            "sales" if outcome == "transferred" else None, TURNS_PER_CALL, int(outcome == "message"),
            int(n % 13 == 0), "Thanks for calling.",
        ))  # fmt: skip
        for t in range(TURNS_PER_CALL):
            turn_id += 1
            at = started + timedelta(seconds=5 + 20 * t)
            turns.append((
                turn_id, sid, f"conv_{n}", t + 1, at, f"caller question number {t} on call {n}",
                "An answer of a sentence or two, as the agent would say it on the phone.", False, "answered",
                False, None, None, 4.2, 210.0, 228.0 + rng.random() * 20, 900.0,
                rng.randint(1, GAPS) if n % 13 == 0 and t == 0 else None,
            ))  # fmt: skip
            sources += [(turn_id, r, f"p{rng.randrange(PASSAGES)}", 0.6, 0.55) for r in range(SOURCES_PER_TURN)]
        if len(turns) >= 30_000:
            yield "calls", calls
            yield "turns", turns
            yield "turn_sources", sources
            calls, turns, sources = [], [], []
    yield "calls", calls
    yield "turns", turns
    yield "turn_sources", sources


COLUMNS = {
    "passages": "id, source, headings, text",
    "gaps": "id, example, count, first_asked_at, last_asked_at, handled_at, vector",
    "calls": "id, call_sid, conversation_id, caller, started_at, answered_at, ended_at, duration_s, end_reason,"
    " end_detail, transferred_to, turns, messages, unanswered, greeting",
    "turns": "id, call_sid, conversation_id, event_id, started_at, caller_text, agent_text, interrupted, outcome,"
    " abstained, fallback, tools, retrieval_ms, llm_first_token_ms, first_chunk_ms, total_ms, gap_id",
    "turn_sources": "turn_id, rank, passage_id, score, similarity",
}


def _sqlite_value(value: object) -> object:
    """As SQLAlchemy stores a datetime in SQLite (UTC, microseconds always written), so text compares in order."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(value, datetime) else value


def seeded_sqlite() -> str:
    path = Path("data/bench/records-100k.sqlite3").resolve()
    url = f"sqlite:///{path}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        work = path.with_suffix(".partial")
        work.unlink(missing_ok=True)
        engine = create_engine(Settings(_env_file=None, database_url=f"sqlite:///{work}"))
        asyncio.run(_upgrade(engine))
        with sqlite3.connect(work) as db:
            for table, rows in _rows():
                marks = ", ".join("?" * len(COLUMNS[table].split(",")))
                db.executemany(
                    f"INSERT INTO {table} ({COLUMNS[table]}) VALUES ({marks})",
                    ([_sqlite_value(v) for v in row] for row in rows),
                )
            db.execute("ANALYZE")
        work.rename(path)
    return url


async def _upgrade(engine: object) -> None:
    await upgrade(engine)  # type: ignore[arg-type]
    await engine.dispose()  # type: ignore[attr-defined]


async def _seed_postgres(url: str) -> None:
    import asyncpg

    engine = create_engine(Settings(_env_file=None, database_url=url))
    await _upgrade(engine)
    conn = await asyncpg.connect(url)
    try:
        for table, rows in _rows():
            await conn.copy_records_to_table(
                table, records=rows, columns=[c.strip() for c in COLUMNS[table].split(",")]
            )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def _time_pages(base: str) -> None:
    with httpx.Client(base_url=base, auth=("admin", PASSWORD), timeout=30) as web:
        deadline = time.monotonic() + 60
        while web.get("/admin/calls").status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.2)  # the store is still being opened
        deep_cursor = f"{(START + timedelta(days=3)).isoformat()}_{CALLS // 10}"
        pages = {
            "calls, first page": "/admin/calls",
            "calls, deep page": f"/admin/calls?after={deep_cursor}",
            "calls, outcome=fallback": "/admin/calls?outcome=fallback",
            "calls, one day": "/admin/calls?from=2026-11-15&to=2026-11-15",
            "a call": f"/admin/calls/CA{CALLS // 2:032x}",
            "knowledge gaps": "/admin/gaps",
            "overview": "/admin",
        }
        for name, path in pages.items():
            web.get(path)  # warm
            timings = []
            for _ in range(SAMPLES if not name.startswith(("knowledge", "overview")) else SAMPLES // 10):
                started = time.perf_counter()
                response = web.get(path)
                timings.append(time.perf_counter() - started)
                assert response.status_code == 200, (path, response.status_code)
            print(f"  {name:<24} {_percentiles(timings)}")


def test_review_pages_at_100k_calls(tmp_path: Path) -> None:
    env = {"ADMIN_PASSWORD": PASSWORD, "LOG_LEVEL": "WARNING", "DATA_DIR": str(Path("data").resolve()),
           "INDEX_DIR": str(tmp_path / "index")}  # fmt: skip
    print(f"\nreview pages, {CALLS:,} calls, {CALLS * TURNS_PER_CALL:,} turns, SQLite:")
    with app_process(tmp_path, {**env, "DATABASE_URL": seeded_sqlite()}, ready_path="/healthz") as (port, _pid):
        _time_pages(f"http://127.0.0.1:{port}")
    from tests.support.servers import _postgres_bin, postgres_server

    if _postgres_bin() is None:
        print("PostgreSQL is not installed: skipped")
        return
    with postgres_server() as pg:
        url = pg.create_database("bench")
        asyncio.run(_seed_postgres(url))
        print(f"review pages, {CALLS:,} calls, PostgreSQL:")
        with app_process(tmp_path, {**env, "DATABASE_URL": url}, ready_path="/healthz") as (port, _pid):
            _time_pages(f"http://127.0.0.1:{port}")
