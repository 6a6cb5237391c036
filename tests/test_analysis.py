"""Knowing what each call was about: post-call analysis off the call's path, by the model (one
structured-output request to the OpenAI stand-in, checked, asked again once) or by rules, kept once
per call across replicas, shown on the review page and by `python -m app calls`, and announced as a
signed `call.analyzed` event. Records on SQLite and a real PostgreSQL; real Hypercorn for the pages."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from app.analysis.fields import FieldSpec, load_fields, parse_fields
from app.analysis.model import check, response_format
from app.analysis.worker import AnalysisTimings, Analyst
from app.brain.llm import LLM
from app.notify.delivery import Delivery, DeliveryTimings
from app.observability import Metrics
from app.records import cli
from app.records.analyses import StoredAnalysis, lease_next, stored
from app.records.events import CallEnded, CallReceived, TransferResult, TurnDone
from app.records.schema import analyses, outbox
from app.records.store import RecordsStore
from app.settings import Settings, load_settings
from app.testing.fake_openai import FakeOpenAI, Reply, response_format_problem
from app.testing.phone import CallRecord, LocalSwitchboard, Phone
from tests.support.calls import sid
from tests.support.receiver import Receiver
from tests.support.signing import signed_by
from tests.support.waiting import until

SECRET = "whsec_analysis_secret"
PASSWORD = "analysis page password"
FIELDS = """\
account_number: string
wants_upgrade: boolean
product: {enum: [fiber, dsl, mobile]}
seats: integer
monthly_budget: {type: number, description: what the caller said they can spend a month}
callback_time: string
"""
FAST = replace(AnalysisTimings(), poll=0.05, first_retry=0.05)
T0 = datetime.now(UTC) - timedelta(minutes=5)
CALL_ENDED_KEYS = {
    "call_sid", "caller", "direction", "message_id", "started_at", "ended_at", "duration_s", "ended",
    "transferred_to", "transfer", "turns", "unanswered", "messages", "review_url",
}  # fmt: skip


def turn(call_sid: str, caller: str, agent: str, n: int = 0, **kw: Any) -> TurnDone:
    values: dict[str, Any] = {
        "call_sid": call_sid, "conversation_id": None, "event_id": n, "started_at": T0 + timedelta(seconds=10 * n),
        "caller_text": caller, "agent_text": agent, "interrupted": False, "outcome": "answered", "abstained": False,
        "fallback": None, "tools": [], "timings_ms": {"first_chunk": 200.0, "total": 600.0}, **kw,
    }  # fmt: skip
    return TurnDone(**values)


UPGRADE = [
    ("hi, this is Dana, account KB-20931", "Hello Dana, how can I help?"),
    ("I'd like to upgrade to fiber for three people", "I'll put you through to our sales team now."),
]
ANSWER = {
    "summary": "Dana wanted to upgrade to fiber for three people. She was put through to sales. It went well. "
    "A fourth sentence that is cut.",
    "intent": "sales",
    "need_met": "transferred",
    "fields": {
        "account_number": "KB-20931",
        "wants_upgrade": True,
        "product": "fiber",
        "seats": 3,
        "monthly_budget": 79.5,
        "callback_time": None,
    },
}


def record_call(record: Callable[[Any], None], call_sid: str, said: list[tuple[str, str]], **how: Any) -> None:
    """A call as the bridge and the brain record it: received, its turns, maybe a transfer, its end."""
    record(CallReceived(call_sid, "+14155550100", T0))
    for n, (caller, agent) in enumerate(said):
        record(turn(call_sid, caller, agent, n, **how.get("turn", {})))
    if how.get("transferred"):
        record(TransferResult(call_sid, how["transferred"], "connected", T0 + timedelta(seconds=50)))
    record(CallEnded(call_sid, "caller_hung_up", "caller_hung_up", T0 + timedelta(minutes=1), 60.0))


@pytest.fixture
def fields_file(tmp_path: Path) -> Path:
    path = tmp_path / "analysis.yaml"
    path.write_text(FIELDS)
    return path


# --- ANALYSIS_FILE --------------------------------------------------------------------------------


def test_the_fields_file_takes_the_documented_format_and_makes_a_schema_openai_accepts(fields_file: Path) -> None:
    fields = load_fields(fields_file)
    assert fields == (
        FieldSpec("account_number", "string"),
        FieldSpec("wants_upgrade", "boolean"),
        FieldSpec("product", "enum", ("fiber", "dsl", "mobile")),
        FieldSpec("seats", "integer"),
        FieldSpec("monthly_budget", "number", (), "what the caller said they can spend a month"),
        FieldSpec("callback_time", "string"),
    )
    settings = Settings(_env_file=None, analysis_file=fields_file)
    body = {"model": "m", "messages": [], "response_format": response_format(settings.analysis_intents, fields)}
    assert response_format_problem(body) is None
    assert settings.analysis_intents == ["question", "billing", "technical problem", "sales", "complaint", "other"]


def test_a_bad_fields_file_stops_start_up_with_a_line_per_problem(tmp_path: Path) -> None:
    bad = tmp_path / "analysis.yaml"
    bad.write_text("account_number: string\nWants-Upgrade: boolean\nproduct: {enum: [fiber, yes]}\nseats: float\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("account_number: string\nproduct: {enum: [fiber\n")
    with pytest.raises(SystemExit) as problems:
        load_settings(_env_file=None, analysis_file=bad)
    with pytest.raises(SystemExit) as syntax:
        load_settings(_env_file=None, analysis_file=broken)
    with pytest.raises(SystemExit) as intents:
        load_settings(_env_file=None, analysis_intents="billing,Sales!")
    lines = str(problems.value.code).splitlines()
    assert lines[0].startswith("Switchboard cannot start") and lines[1] == f"  ANALYSIS_FILE: {bad}:"
    assert lines[2:] == [
        "    field 'Wants-Upgrade': a name is lower-case letters, digits and _, starting with a letter",
        "    field 'product': enum value True was read as a boolean: quote it ('yes', 'no')",
        "    field 'seats': type 'float' is not one of string, boolean, number, integer or {enum: [a, b]}",
    ]
    assert f"ANALYSIS_FILE: {broken} is not valid YAML at line 3" in str(syntax.value.code)
    many = {f"choice_{n}": {"enum": [f"v{v}" for v in range(50)]} for n in range(11)}
    with pytest.raises(ValueError, match="550 enum values in all: at most 500"):
        parse_fields(many, "f")
    assert "ANALYSIS_INTENTS: intent 'sales!'" in str(intents.value.code)


def test_what_the_model_answers_is_redacted_before_it_is_kept() -> None:
    fields = parse_fields({"card_number": "integer", "pin": "number", "seats": "integer", "note": "string"}, "f")
    said = {
        "summary": "The caller read out 4111 1111 1111 1111 to pay. They were helped.",
        "intent": "billing",
        "need_met": "resolved",
        "fields": {"card_number": 4111111111111111, "pin": 4321, "seats": 3, "note": "my SSN is 078-05-1120"},
    }
    kept = check(json.dumps(said), Settings(_env_file=None).analysis_intents, fields)
    assert kept.summary == "The caller read out [card number] to pay. They were helped."
    assert kept.fields == {"card_number": None, "pin": None, "seats": 3, "note": "my SSN is [social security number]"}
    assert kept.empty == {"card_number": "redacted", "pin": "redacted"}


# --- one replica, whole: the app on Hypercorn -----------------------------------------------------


@pytest.fixture
def analysis_settings(make_settings, fake_model: FakeOpenAI, tmp_path: Path, fields_file: Path) -> Callable:
    def make(**overrides: Any) -> dict[str, Any]:
        return {
            "database_url": f"sqlite:///{tmp_path / 'records.sqlite3'}",
            "data_dir": tmp_path,
            "admin_password": PASSWORD,
            "analysis_file": fields_file,
            "openai_base_url": fake_model.base_url,
            "openai_model": "fake-model",
            **overrides,
        }

    return make


@asynccontextmanager
async def analysing(serve: Any, settings: dict[str, Any]) -> AsyncIterator[Any]:
    """The app, analysing each call as soon as it ends (no grace for late turns) and retrying fast."""
    async with serve(**settings) as server:
        svc = server.app.extensions["switchboard"]
        svc.records.outbox.call_ended_grace = timedelta(0)
        svc.analyst.timings = FAST
        async with asyncio.timeout(30):
            await svc.records.ready.wait()
        yield server


async def analysed(engine: Any, call_sid: str, timeout: float = 20.0) -> StoredAnalysis:
    async def settled() -> StoredAnalysis | None:
        async with engine.connect() as conn:
            found = await stored(conn, call_sid)
        return found if found is not None and found.state != "pending" else None

    return await until(settled, timeout=timeout, what=f"the analysis of {call_sid} settled")


async def test_with_the_model_the_fields_come_back_typed_and_the_review_page_and_cli_show_them(
    serve, analysis_settings, fake_model
) -> None:
    fake_model.queue_structured(Reply.text(json.dumps(ANSWER)))
    settings = analysis_settings()
    call = sid(1)
    async with analysing(serve, settings) as server:
        svc = server.app.extensions["switchboard"]
        record_call(svc.records.record, call, UPGRADE, transferred="sales")
        result = await analysed(svc.records.engine, call)
        async with httpx.AsyncClient(base_url=server.http_url, auth=("admin", PASSWORD)) as web:
            page = (await web.get(f"/admin/calls/{call}")).text
            transferred = (await web.get("/admin/calls", params={"need_met": "transferred"})).text
            resolved = (await web.get("/admin/calls", params={"need_met": "resolved"})).text
            sales = (await web.get("/admin/calls", params={"intent": "sales"})).text
            overview = (await web.get("/admin")).text
        shown, listed = io.StringIO(), io.StringIO()
        reading = Settings(_env_file=None, database_url=settings["database_url"], data_dir=settings["data_dir"])
        await cli.call(reading, call, True, shown)
        await cli.calls(reading, None, True, 10, listed, intent="sales", need_met="transferred")
    fields = result.analysis.fields
    assert result.state == "done" and result.analysis.method == "model"
    assert fields == ANSWER["fields"] and fields["wants_upgrade"] is True and type(fields["seats"]) is int
    assert result.analysis.empty == {"callback_time": "not in the call"}
    assert result.analysis.summary == "Dana wanted to upgrade to fiber for three people. She was put through to " \
        "sales. It went well."  # fmt: skip
    (request,) = fake_model.structured_requests  # one request, as structured output
    assert request.body["response_format"]["type"] == "json_schema"
    assert request.body["response_format"]["json_schema"]["strict"] is True and "stream" not in request.body
    system, user = request.messages
    assert system["role"] == "system" and "KB-20931" not in system["content"]
    assert user["content"].startswith("<transcript>\ncaller: hi, this is Dana, account KB-20931")
    assert json.loads(shown.getvalue())["analysis"] == {"state": "done", **result.analysis.to_json()}
    (row,) = json.loads(listed.getvalue())["calls"]
    assert row["call_sid"] == call and row["summary"] == result.analysis.summary and row["intent"] == "sales"
    assert "She was put through to sales." in page and "KB-20931" in page and "– (not in the call)" in page
    assert call in transferred and call in sales and call not in resolved and "She was put through" in transferred
    assert '<span class="figure">0%</span>\n      resolved (1 analysed calls)' in overview
    assert '<a href="/admin/calls?intent=sales">sales</a> <span class="count">1</span>' in overview


async def test_a_model_that_errors_is_tried_again_and_json_that_does_not_fit_twice_fails_the_analysis(
    serve, analysis_settings, fake_model
) -> None:
    wrong = {**ANSWER, "fields": {**ANSWER["fields"], "product": "cable"}}
    fake_model.queue_structured(
        Reply(status=503),  # the first try: the model is unavailable, tried again later
        Reply.text("Sure! Here is the analysis: {summary: ..."),  # the second: not JSON
        Reply.text(json.dumps(wrong)),  # asked again: still does not fit
    )
    async with analysing(serve, analysis_settings()) as server:
        svc = server.app.extensions["switchboard"]
        record_call(svc.records.record, sid(2), UPGRADE)
        result = await analysed(svc.records.engine, sid(2))
        async with httpx.AsyncClient(base_url=server.http_url, auth=("admin", PASSWORD)) as web:
            page = (await web.get(f"/admin/calls/{sid(2)}")).text
        async with svc.records.engine.connect() as conn:
            announced = (await conn.execute(select(outbox.c.type))).scalars().all()
    assert result.state == "failed" and result.attempts == 2 and result.analysis is None
    assert result.error == "the model's JSON did not fit, twice: product: expected one of fiber, dsl, mobile, got str"
    assert len(fake_model.structured_requests) == 3
    feedback = fake_model.structured_requests[2].messages[-1]["content"]
    assert feedback == "That answer does not fit the schema: it is not JSON. Answer again, fitting it."
    assert "Analysis failed after 2 tries: the model&#39;s JSON did not fit" in page
    assert "call.analyzed" not in announced


async def test_call_analyzed_arrives_signed_once_and_call_ended_stays_as_it_was(
    serve, analysis_settings, fake_model
) -> None:
    fake_model.queue_structured(Reply.text(json.dumps(ANSWER)))
    async with Receiver() as receiver:
        settings = analysis_settings(notify_webhook_url=receiver.url, notify_webhook_secret=SECRET)
        async with analysing(serve, settings) as server:
            svc = server.app.extensions["switchboard"]
            record_call(svc.records.record, sid(3), UPGRADE, transferred="sales")
            await analysed(svc.records.engine, sid(3))
            await receiver.wait(lambda r: {"call.ended", "call.analyzed"} <= {e["type"] for e in r.delivered()})
            async with svc.records.engine.begin() as conn:  # a day later, with every lease long lapsed
                again = await lease_next(conn, datetime.now(UTC) + timedelta(days=1), timedelta(seconds=60))
    assert again == (None, None)  # done is done: nothing left to take, ever
    (analyzed,) = [r for r in receiver.requests if r.event["type"] == "call.analyzed"]
    ended = next(r.event for r in receiver.requests if r.event["type"] == "call.ended")
    assert signed_by(analyzed, SECRET) and len(fake_model.structured_requests) == 1
    data = analyzed.event["data"]
    assert data == {
        "call_sid": sid(3),
        "caller": "+14155550100",
        "ended_at": (T0 + timedelta(minutes=1)).isoformat(timespec="seconds"),
        **{k: v for k, v in ANSWER.items() if k != "summary"},
        "summary": "Dana wanted to upgrade to fiber for three people. She was put through to sales. It went well.",
        "empty_fields": {"callback_time": "not in the call"},
        "method": "model",
        "review_url": None,  # no PUBLIC_URL: no link
    }
    assert set(ended["data"]) == CALL_ENDED_KEYS and ended["data"]["ended"] == "transferred"


# --- without a model --------------------------------------------------------------------------------


async def test_without_a_model_a_real_calls_summary_and_need_met_come_from_its_turns(
    make_settings, tmp_path: Path, fields_file: Path
) -> None:
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'records.sqlite3'}", analysis_file=fields_file)
    async with LocalSwitchboard(settings) as board:
        svc = board.server.app.extensions["switchboard"]
        svc.records.outbox.call_ended_grace = timedelta(0)
        svc.analyst.timings = FAST
        async with Phone(board, CallRecord("documents"), realtime=False) as phone:
            await phone.greeting(time.perf_counter())
            answer = await phone.say("how much is the autopay discount?", lambda _: None)
            await phone.hang_up()
        result = await analysed(svc.records.engine, phone.caller.call_sid)
    assert "$5" in answer.agent or "five" in answer.agent
    assert result.state == "done" and result.analysis.method == "rules"
    assert result.analysis.summary == "The caller said “how much is the autopay discount?”. The agent answered."
    assert (result.analysis.intent, result.analysis.need_met) == ("billing", "resolved")
    names = [spec.name for spec in load_fields(fields_file)]
    assert result.analysis.fields == dict.fromkeys(names) and result.analysis.empty == dict.fromkeys(names, "no model")


class Analysing:
    """A records store, its delivery task and its analyst, as one replica runs them."""

    def __init__(self, settings: Settings, timings: AnalysisTimings = FAST, encode: Any = None) -> None:
        self.metrics = Metrics()
        self.store = RecordsStore(settings, self.metrics, encode)  # with `encode`: unanswered questions
        self.store.outbox.call_ended_grace = timedelta(0)
        self.llm = LLM(settings)
        store = self.store
        fast = DeliveryTimings(poll=0.05, first_retry=0.05, max_retry=0.2)
        self.delivery = Delivery(settings, self.metrics, store.engine, store.outbox, store.ready, fast)
        self.analyst = Analyst(settings, self.metrics, store.engine, store.outbox, store.ready, self.llm, timings)

    async def __aenter__(self) -> Analysing:
        await self.store.start()
        self.delivery.start()
        self.analyst.start()
        async with asyncio.timeout(30):
            await self.store.ready.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.analyst.stop()
        await self.delivery.stop()
        await self.store.stop()
        await self.llm.aclose()

    def done(self, method: str) -> float:
        labels = {"method": method, "outcome": "done"}
        return self.metrics.registry.get_sample_value("switchboard_analyses_total", labels) or 0.0


async def test_without_a_model_rules_fill_summary_intent_and_need_met(
    make_settings, records_url: str, encoder: Any
) -> None:
    calls = {
        sid(11): ([("how much is the autopay discount?", "Autopay takes $5 off."), ("thanks, bye", "Goodbye!")], {}),
        sid(12): ([("my internet is not working, the router blinks red", "Let me put you through.")],
                  {"transferred": "support"}),
        sid(13): ([("do you offer pet insurance?", "I don't have that information.")],
                  {"turn": {"unanswered": "do you offer pet insurance?"}}),
        sid(14): ([("this is the worst service, I want to complain", "I'm sorry to hear that.")], {}),
        sid(15): ([], {}),
    }  # fmt: skip
    async with Analysing(make_settings(database_url=records_url), encode=encoder.encode) as replica:
        for call_sid, (said, how) in calls.items():
            record_call(replica.store.record, call_sid, said, **how)
        await replica.store.messages.add(
            name="Ada", callback_number="+14155550100", message="Call me.", call_sid=sid(16), caller=None,
            conversation_id=None,
        )  # fmt: skip
        record_call(replica.store.record, sid(16), [("can I leave a message for billing?", "Message saved.")])
        results = {call_sid: await analysed(replica.store.engine, call_sid) for call_sid in [*calls, sid(16)]}
    seen = {s: (r.analysis.intent, r.analysis.need_met, r.analysis.summary) for s, r in results.items()}
    assert seen == {
        sid(11): ("billing", "resolved",
                  "The caller said “how much is the autopay discount?”. The agent answered."),
        sid(12): ("technical problem", "transferred",
                  "The caller said “my internet is not working, the router blinks red”. They were transferred to "
                  "support."),
        sid(13): ("question", "unresolved",
                  "The caller said “do you offer pet insurance?”. The documents did not answer “do you offer pet "
                  "insurance?”."),
        sid(14): ("complaint", "resolved",
                  "The caller said “this is the worst service, I want to complain”. The agent answered."),
        sid(15): ("other", "unresolved", "The caller hung up without saying anything."),
        sid(16): ("billing", "message_taken",
                  "The caller said “can I leave a message for billing?”. They left a message for the team."),
    }  # fmt: skip
    assert replica.done("rules") == 6


async def test_with_a_model_a_call_with_nothing_said_is_left_to_the_rules(
    make_settings, fake_model: FakeOpenAI, tmp_path: Path, fields_file: Path
) -> None:
    settings = make_settings(
        database_url=f"sqlite:///{tmp_path / 'records.sqlite3'}",
        openai_base_url=fake_model.base_url,
        openai_model="fake-model",
        analysis_file=fields_file,
    )
    async with Analysing(settings) as replica:
        record_call(replica.store.record, sid(21), [])
        result = await analysed(replica.store.engine, sid(21))
    assert fake_model.structured_requests == []
    assert (result.analysis.method, result.analysis.need_met) == ("rules", "unresolved")
    assert result.analysis.summary == "The caller hung up without saying anything."
    assert set(result.analysis.empty.values()) == {"nothing said"}


# --- several replicas on one PostgreSQL -------------------------------------------------------------


async def test_a_lease_gives_each_analysis_to_exactly_one_of_two_workers(postgres: Any, make_settings: Any) -> None:
    from app.records.database import create_engine

    settings = make_settings(database_url=postgres.create_database("analysis_leases"))
    async with Analysing(settings) as replica:
        await replica.analyst.stop()  # this test plays the workers itself
        for n in range(20):
            record_call(replica.store.record, sid(100 + n), [])
        await replica.store.recorder.flushed()
    engines = [create_engine(settings) for _ in range(4)]
    won: list[str] = []

    async def take(engine: Any) -> Any:
        async with engine.begin() as conn:
            return await lease_next(conn, datetime.now(UTC), timedelta(seconds=60))

    try:
        while True:  # four workers at once, each taking what it can, until nothing is due before the leases lapse
            rounds = await asyncio.gather(*(take(engine) for engine in engines))
            won += [row.call_sid for row, _ in rounds if row is not None]
            later = datetime.now(UTC) + timedelta(seconds=30)
            if all(row is None and (due is None or due > later) for row, due in rounds):
                break
        async with engines[0].connect() as conn:
            leased = (await conn.execute(select(analyses.c.lease_token))).scalars().all()
    finally:
        for engine in engines:
            await engine.dispose()
    assert sorted(won) == sorted(sid(100 + n) for n in range(20))  # each once
    assert len(set(leased)) == 20


async def test_two_replicas_on_one_postgresql_analyse_a_call_once(postgres: Any, make_settings: Any) -> None:
    async with FakeOpenAI() as model, Receiver() as receiver:
        # A slow model: while one replica waits for it, the other keeps looking for work.
        model.responder = lambda body: Reply(tokens=[json.dumps({**ANSWER, "fields": {}})], first_token_delay=0.5)
        settings = make_settings(
            database_url=postgres.create_database("analysis_replicas"),
            openai_base_url=model.base_url,
            openai_model="fake-model",
            notify_webhook_url=receiver.url,
            notify_webhook_secret=SECRET,
        )
        async with Analysing(settings) as one, Analysing(settings) as two:
            for n in range(4):
                record_call((one if n % 2 else two).store.record, sid(200 + n), UPGRADE)
            await receiver.wait(lambda r: sum(e["type"] == "call.analyzed" for e in r.delivered()) == 4, timeout=60)
            by = [one.done("model"), two.done("model")]
    analyzed = [e["data"]["call_sid"] for e in receiver.delivered() if e["type"] == "call.analyzed"]
    assert sorted(analyzed) == [sid(200 + n) for n in range(4)]  # each once
    assert len(model.structured_requests) == 4 and sum(by) == 4


async def test_the_stand_in_refuses_a_schema_strict_mode_would_refuse(fake_model: FakeOpenAI) -> None:
    """As OpenAI does: a strict schema must list every property as required and allow no others."""
    loose = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": []}
    client = openai.AsyncOpenAI(api_key="k", base_url=fake_model.base_url, max_retries=0)
    try:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "hi"}],
                response_format={"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": loose}},
            )
    finally:
        await client.close()
    assert "additionalProperties" in str(refused.value) and refused.value.status_code == 400
