"""Call-backs end to end: the agent returns a caller's message by phone through the Twilio REST stand-in
(Calls.json with answering-machine detection), the same bridge and brain, inside the callee's
calling hours, with the clock set by the test."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.brain.tools.do_not_call import DONE_LINE
from app.callbacks.dialer import Planner
from app.callbacks.lines import voicemail_line
from app.callbacks.store import Callback
from app.clock import CallClock
from app.departments.directory import Directory
from app.notify.events import call_ended_data
from app.records.messages import Message
from app.records.schema import calls
from app.records.store import open_for_reading
from app.settings import Settings
from app.speech_engine_contract import CALL_SID_HEADER
from app.testing.clock import SetClock
from app.testing.fake_elevenlabs import first_message
from app.testing.fake_openai import Reply
from app.testing.live_server import LiveServer
from app.testing.speech_engine import SpeechEngineClient
from app.testing.twilio_caller import TwilioCaller
from app.testing.twilio_dial import Colleague
from app.testing.twilio_outbound import Callee, Placed
from tests.support.config import ACCOUNT_SID, API_KEY, ENGINE_ID, PUBLIC_URL, SECRET, TWILIO_TOKEN
from tests.support.phone import FAST_ACTIONS, FAST_BRIDGE
from tests.support.servers import AppProcess
from tests.support.waiting import until

PASSWORD = "correct horse battery staple"
OUR_NUMBER = "+12025550100"  # TWILIO_PHONE_NUMBER
CALLEE = "+13125550147"  # Chicago: America/Chicago
SALES = "+12025550143"
# Monday 7 December 2026, 10:00 in Chicago (16:00 UTC): the callee may be called, sales is open.
MONDAY_10_CHICAGO = datetime(2026, 12, 7, 16, 0, tzinfo=UTC)

DEPARTMENTS = textwrap.dedent(
    f"""
    [departments.sales]
    number = "{SALES}"
    handles = "new plans, upgrades and prices"
    time_zone = "America/New_York"

    [departments.sales.hours]
    mon = "09:00-17:30"
    tue = "09:00-17:30"
    wed = "09:00-17:30"
    thu = "09:00-17:30"
    fri = "09:00-17:30"
    """
)


@dataclass
class Office:
    server: LiveServer
    clock: SetClock
    settings: dict[str, Any]

    @property
    def svc(self) -> Any:
        return self.server.app.extensions["switchboard"]

    async def message(self, text: str, number: str = CALLEE, department: str | None = "sales") -> Message:
        await self.svc.records.ready.wait()
        return await self.svc.records.messages.add(
            name="Dana Whitfield",
            callback_number=number,
            message=text,
            call_sid=None,
            caller=None,
            conversation_id=None,
            department=department,
        )

    async def call_back(self, message: Message, at: datetime | None = None) -> Callback:
        now = self.clock.now()
        callback = await self.svc.callbacks.schedule(message.id, at or now, self.svc.planner.plan, now)
        assert callback is not None
        self.svc.dialer.wake()
        return callback

    async def state(self, message: Message) -> Callback:
        found = await self.svc.callbacks.get(message.id)
        assert found is not None
        return found

    async def passed(self) -> None:
        """The dialer has looked at the call-backs once more, at the clock's time."""
        await self.svc.dialer.passed()


@pytest.fixture
def departments_file(tmp_path: Path) -> Path:
    path = tmp_path / "departments.toml"
    path.write_text(DEPARTMENTS)
    return path


@pytest.fixture
def office(serve, call_settings, fake_elevenlabs, twilio_api, departments_file, tmp_path):
    @asynccontextmanager
    async def open_office(
        at: datetime = MONDAY_10_CHICAGO, first_message_allowed: bool = True, realtime: bool = False, **overrides: Any
    ) -> AsyncIterator[Office]:
        fake_elevenlabs.engine["overrides"] = {"first_message": first_message_allowed}
        settings = {
            **call_settings,
            "openai_model": None,  # documents-only: the rules answer, no model to script
            "transfer_targets": {},
            "departments_file": departments_file,
            "twilio_phone_number": OUR_NUMBER,
            "data_dir": tmp_path,
            **overrides,
        }
        clock = SetClock(at)
        async with serve(clock=clock, **settings) as server:
            svc = server.app.extensions["switchboard"]
            svc.telephony.limits = FAST_BRIDGE
            svc.registry.timings = FAST_ACTIONS
            twilio_api.app_url = server.http_url
            twilio_api.app_public_url = PUBLIC_URL
            twilio_api.realtime = realtime  # the callee's phone plays the agent's audio at its real pace
            yield Office(server, clock, settings)

    return open_office


async def finished(placed: Placed, timeout: float = 30.0) -> None:
    """Until Twilio has ended the placed call."""
    async with asyncio.timeout(timeout):
        await placed.done.wait()


async def record_of(office: Office, call_sid: str) -> Any:
    async with office.svc.records.engine.connect() as conn:
        return (await conn.execute(select(calls).where(calls.c.call_sid == call_sid))).one_or_none()


async def test_a_person_answers_hears_why_the_agent_calls_and_is_put_through_to_sales(
    office, twilio_api, fake_elevenlabs
) -> None:
    twilio_api.colleagues[SALES] = Colleague("takes")
    async with office() as o:
        message = await o.message("I was charged twice on my bill this month")
        scheduled = await o.call_back(message)
        assert scheduled.state == "scheduled" and scheduled.due_at == MONDAY_10_CHICAGO
        placed = await twilio_api.placed_call(0)
        assert placed.to == CALLEE and placed.form["From"] == OUR_NUMBER
        assert placed.form["MachineDetection"] == "DetectMessageEnd"
        assert placed.form["Url"].startswith(f"{PUBLIC_URL}/callback/answer?")
        assert set(placed.status_events) >= {"initiated", "completed"}
        conv = await fake_elevenlabs.conversation(0)
        opening = first_message(conv.initiation)
        assert opening is not None and opening.startswith("Hi Dana, this is the Kestrel Broadband assistant")
        assert "returning your call about your message: I was charged twice on my bill this month." in opening
        await twilio_api.wait_for(lambda: placed.leg is not None)
        assert placed.leg is not None and placed.leg.webhook is not None
        assert placed.leg.webhook.parameters["caller"] == CALLEE
        async with await SpeechEngineClient.open(
            f"{o.server.ws_url}/ws", api_key=API_KEY, shared_secret=SECRET, headers={CALL_SID_HEADER: placed.sid}
        ) as person:
            await person.init(conv.conversation_id)
            answer = await person.ask("yes please, put me through to sales")
            assert "sales" in answer.text
            await twilio_api.wait_for(lambda: len(twilio_api.dials) == 1)
        (dial,) = twilio_api.dials
        assert dial.number == SALES and dial.key == "1"
        assert (await o.state(message)).shown() == "reached"
        await o.svc.records.recorder.flushed()
        record = await record_of(o, placed.sid)
        assert record.direction == "outbound" and record.message_id == message.id
        assert record.transferred_to == "sales"


async def test_a_machine_answers_the_agent_leaves_a_voicemail_after_the_beep_then_hangs_up(
    office, twilio_api, fake_elevenlabs
) -> None:
    twilio_api.callees[CALLEE] = Callee("machine")
    async with office(admin_password=PASSWORD, realtime=True) as o:
        message = await o.message("My router keeps dropping the connection", department=None)
        await o.call_back(message)
        placed = await twilio_api.placed_call(0)
        conv = await fake_elevenlabs.conversation(0)
        said = first_message(conv.initiation)
        await finished(placed)  # the voicemail played, the bridge hung up, Twilio ended the call
        state = await o.state(message)
        await o.svc.records.recorder.flushed()
        async with o.svc.records.engine.connect() as conn:
            ended = await call_ended_data(conn, placed.sid, None)
        async with httpx.AsyncClient(base_url=o.server.http_url, auth=("admin", PASSWORD)) as web:
            review = await web.get(f"/admin/calls/{placed.sid}")
    assert ended["direction"] == "outbound" and ended["message_id"] == message.id
    assert ended["ended"] == "agent_ended" and ended["caller"] == CALLEE
    assert "Call-back to" in review.text and f"message {message.id}" in review.text
    assert said == voicemail_line(o.svc.settings, "Dana Whitfield", message.message)
    assert "Please call us back on 2 0 2, 5 5 5, 0 1 0 0. Goodbye." in said
    assert placed.answer is not None and placed.answer.parameters["callback"].endswith(":voicemail")
    leg = placed.leg
    assert leg is not None and leg.media, "the machine heard the agent's own voice (ElevenLabs audio)"
    assert leg.close_code == 1000 and not leg.hung_up  # the server ended the stream...
    assert placed.action is not None and placed.action.verbs == ["Hangup"]  # ...and then hung up
    assert placed.statuses[-1] == "completed"
    assert state.state == "voicemail" and state.shown() == "voicemail left"


async def test_a_fax_is_hung_up_on_and_never_called_again(office, twilio_api) -> None:
    twilio_api.callees[CALLEE] = Callee("fax")
    async with office() as o:
        message = await o.message("Please call me", department=None)
        await o.call_back(message)
        placed = await twilio_api.placed_call(0)
        await finished(placed)
        state = await o.state(message)
    assert placed.answer is not None and placed.answer.verbs == ["Hangup"] and placed.leg is None
    assert state.shown() == "not called: a fax machine answered"


# Monday 03:00 in Chicago (09:00 UTC); 08:00 there is 14:00 UTC.
MONDAY_03_CHICAGO = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
# Saturday 10:00 in Chicago: the callee may be called, sales (Monday to Friday, New York) is closed.
SATURDAY_10_CHICAGO = datetime(2026, 12, 5, 16, 0, tzinfo=UTC)
MONDAY_09_NEW_YORK = datetime(2026, 12, 7, 14, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("at", "department", "allowed"),
    [(MONDAY_03_CHICAGO, None, MONDAY_09_NEW_YORK), (SATURDAY_10_CHICAGO, "sales", MONDAY_09_NEW_YORK)],
    ids=["callee-asleep", "department-closed"],
)
async def test_nobody_is_dialled_outside_the_callees_hours_or_while_the_department_is_closed(
    office, twilio_api, at, department, allowed
) -> None:
    async with office(at) as o:
        message = await o.message("Question about my bill", department=department)
        scheduled = await o.call_back(message)
        await o.passed()
        assert twilio_api.creates_seen == 0
        o.clock.set(allowed - timedelta(minutes=1))
        await o.passed()
        assert twilio_api.creates_seen == 0 and (await o.state(message)).state == "scheduled"
        o.clock.set(allowed)
        placed = await twilio_api.placed_call(0)
    assert scheduled.due_at == allowed and scheduled.shown() == "scheduled for 2026-12-07 14:00 UTC"
    assert placed.to == CALLEE and twilio_api.creates_seen == 1


async def test_busy_then_no_answer_then_answered_is_three_tries_spaced_as_configured(office, twilio_api) -> None:
    twilio_api.callees[CALLEE] = [Callee("busy"), Callee("no_answer"), Callee("human")]
    start = MONDAY_10_CHICAGO
    async with office(start, callback_retry_minutes=90, callback_attempts=3) as o:
        message = await o.message("Please call me about my upgrade", department=None)
        await o.call_back(message)
        first = await twilio_api.placed_call(0)
        await finished(first)
        after_busy = await until(lambda: _settled(o, message), what="the busy try settled")
        o.clock.set(start + timedelta(minutes=89))
        await o.passed()
        assert len(twilio_api.placed) == 1
        o.clock.set(start + timedelta(minutes=90))
        second = await twilio_api.placed_call(1)
        await finished(second)
        after_no_answer = await until(lambda: _settled(o, message), what="the unanswered try settled")
        o.clock.set(start + timedelta(minutes=179))
        await o.passed()
        assert len(twilio_api.placed) == 2
        o.clock.set(start + timedelta(minutes=180))
        third = await twilio_api.placed_call(2)
        await twilio_api.wait_for(lambda: third.leg is not None)
        reached = await until(lambda: _done(o, message), what="the third try answered")
    assert [p.statuses[-1] for p in (first, second)] == ["busy", "no-answer"]
    assert after_busy.due_at == start + timedelta(minutes=90) and after_busy.last_result == "busy"
    assert after_no_answer.due_at == start + timedelta(minutes=180) and after_no_answer.last_result == "no_answer"
    assert after_no_answer.shown() == "scheduled for 2026-12-07 19:00 UTC (try 3; last: no answer)"
    assert reached.state == "reached" and reached.attempts == 3 and len(twilio_api.placed) == 3


async def test_after_the_last_try_the_message_says_no_answer_after_n_tries(office, twilio_api) -> None:
    twilio_api.callees[CALLEE] = Callee("no_answer")
    async with office(callback_attempts=2) as o:
        message = await o.message("Call me", department=None)
        await o.call_back(message)
        await finished(await twilio_api.placed_call(0))
        await until(lambda: _settled(o, message), what="the first try settled")
        o.clock.set(MONDAY_10_CHICAGO + timedelta(hours=1))
        await finished(await twilio_api.placed_call(1))
        last = await until(lambda: _done(o, message), what="the last try settled")
        o.clock.set(MONDAY_10_CHICAGO + timedelta(days=1))
        await o.passed()
    assert last.shown() == "no answer after 2 tries" and len(twilio_api.placed) == 2


async def _settled(o: Office, message: Message) -> Callback | None:
    found = await o.state(message)
    return found if found.state == "scheduled" and found.last_result else None


async def _done(o: Office, message: Message) -> Callback | None:
    found = await o.state(message)
    return found if found.state not in ("scheduled", "calling") else None


@pytest.mark.parametrize(
    ("number", "why"),
    [("+19005550199", "it is a premium-rate number"), ("+1555", "it is not a valid phone number")],
    ids=["premium-rate", "invalid"],
)
async def test_a_number_that_cannot_be_called_is_never_dialled_and_says_why(office, twilio_api, number, why) -> None:
    async with office() as o:
        message = await o.message("Call me", number=number, department=None)
        scheduled = await o.call_back(message)
        await o.passed()
    assert scheduled.state == "not_callable" and scheduled.shown() == f"not called: {why}"
    assert twilio_api.creates_seen == 0


async def test_dont_call_me_again_puts_the_number_on_the_list_and_later_call_backs_are_refused(
    office, twilio_api, fake_elevenlabs
) -> None:
    async with office(admin_password=PASSWORD) as o:
        first = await o.message("About my bill", department=None)
        await o.call_back(first)
        placed = await twilio_api.placed_call(0)
        conv = await fake_elevenlabs.conversation(0)
        async with await SpeechEngineClient.open(
            f"{o.server.ws_url}/ws", api_key=API_KEY, shared_secret=SECRET, headers={CALL_SID_HEADER: placed.sid}
        ) as person:
            await person.init(conv.conversation_id)
            answer = await person.ask("that's sorted now, and please don't call me again")
        later = await o.message("Another question", department=None)
        refused = await o.call_back(later)
        await o.passed()
        placed_while_listed = len(twilio_api.placed)
        async with httpx.AsyncClient(base_url=o.server.http_url, auth=("admin", PASSWORD)) as web:
            listed = await web.get("/admin/do-not-call")
            messages_page = await web.get("/admin/messages")
            action, token = re.search(
                r'action="([^"]+/do-not-call/remove)"[^>]*>\s*<input type="hidden" name="csrf_token" value="([^"]+)"',
                listed.text,
            ).groups()
            removed = await web.post(action, data={"csrf_token": token, "number": CALLEE})
            after = await web.get("/admin/do-not-call")
        again = await o.call_back(later)
    assert answer.text.startswith(DONE_LINE)
    assert refused.state == "do_not_call" and refused.shown() == "do not call"
    assert placed_while_listed == 1
    assert CALLEE in listed.text and f"asked on call {placed.sid}" in listed.text
    assert "do not call" in messages_page.text
    assert removed.status_code == 303 and CALLEE not in after.text
    assert again.state == "scheduled"


async def test_two_replicas_on_one_postgresql_store_place_a_call_back_once(
    serve, call_settings, twilio_api, departments_file, tmp_path, postgres
) -> None:
    twilio_api.callees[CALLEE] = Callee("busy")
    settings = {
        **call_settings,
        "openai_model": None,
        "transfer_targets": {},
        "departments_file": departments_file,
        "twilio_phone_number": OUR_NUMBER,
        "callback_attempts": 1,
        "database_url": postgres.create_database(f"callbacks_{uuid.uuid4().hex[:10]}"),
    }
    clock = SetClock(MONDAY_10_CHICAGO)
    async with serve(clock=clock, **settings) as one, serve(clock=clock, **settings) as two:
        replicas = [server.app.extensions["switchboard"] for server in (one, two)]
        twilio_api.app_url, twilio_api.app_public_url = one.http_url, PUBLIC_URL
        for svc in replicas:
            await svc.records.ready.wait()
        message = await replicas[0].records.messages.add(
            name="Dana", callback_number=CALLEE, message="Call me", call_sid=None, caller=None, conversation_id=None
        )
        soon = MONDAY_10_CHICAGO + timedelta(minutes=1)
        await replicas[0].callbacks.schedule(message.id, soon, replicas[0].planner.plan, clock.now())
        await asyncio.gather(*(svc.dialer.passed() for svc in replicas))
        assert twilio_api.creates_seen == 0
        clock.set(soon)  # due for both at once: they race for it
        await asyncio.gather(*(svc.dialer.passed() for svc in replicas))
        await finished(await twilio_api.placed_call(0))
        done = await until(lambda: _final(replicas[1], message.id), what="the try settled")
        await asyncio.gather(*(svc.dialer.passed() for svc in replicas))
    assert twilio_api.creates_seen == 1 and len(twilio_api.placed) == 1
    assert done.shown() == "no answer after 1 try"


async def _final(svc: Any, message_id: int) -> Callback | None:
    found = await svc.callbacks.get(message_id)
    return found if found is not None and found.state not in ("scheduled", "calling") else None


async def test_killed_between_scheduled_and_placed_the_restarted_server_places_the_call_once(
    twilio_api, fake_elevenlabs, shared_data_dir, kb_index, tmp_path
) -> None:
    twilio_api.callees[CALLEE] = Callee("busy")
    database = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    env = {
        "PUBLIC_URL": PUBLIC_URL,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_API_BASE_URL": twilio_api.base_url,
        "TWILIO_PHONE_NUMBER": OUR_NUMBER,
        "ELEVENLABS_API_KEY": API_KEY,
        "ELEVENLABS_BASE_URL": fake_elevenlabs.base_url,
        "SPEECH_ENGINE_ID": ENGINE_ID,
        "SHARED_SECRET": SECRET,
        "DATA_DIR": str(shared_data_dir),
        "INDEX_DIR": str(kb_index),
        "DATABASE_URL": database,
        "CALLBACK_HOURS": "00:00-24:00",
        "CALLBACK_ATTEMPTS": "1",
        "CALL_LEASE_SECONDS": "3",
    }
    settings = Settings(_env_file=None, data_dir=shared_data_dir, database_url=database, callback_hours="00:00-24:00")
    store = await open_for_reading(settings)
    try:
        message = await store.messages.add(
            name="Dana", callback_number=CALLEE, message="Call me", call_sid=None, caller=None, conversation_id=None
        )
        now = datetime.now(UTC)
        directory = Directory(settings.model_copy(update={"departments_file": None}), CallClock())
        await store.callbacks.schedule(message.id, now, Planner(settings, directory).plan, now)
    finally:
        await store.stop()
    twilio_api.hold_creates = asyncio.Event()  # the create request waits at Twilio's door...
    server = AppProcess(env, tmp_path)
    try:
        await server.start()
        twilio_api.app_url, twilio_api.app_public_url = server.url, PUBLIC_URL
        await twilio_api.wait_for(lambda: twilio_api.creates_seen == 1)
        taken = await _read_callback(settings, message.id)
        server.signal(signal.SIGKILL)  # ...and the server dies with the try taken, the call not placed
        assert await asyncio.to_thread(server.wait, 30) == -signal.SIGKILL
        twilio_api.refusing_held = True
        twilio_api.hold_creates.set()
        twilio_api.hold_creates = None
        await server.start()
        placed = await twilio_api.placed_call(0, timeout=60)  # once the dead replica's lease has lapsed
        await finished(placed)
        final = await until(lambda: _read_final(settings, message.id), what="the try settled", timeout=60)
    finally:
        server.stop()
    assert taken.state == "calling" and taken.call_sid is None and taken.attempts == 1
    assert len(twilio_api.placed) == 1 and twilio_api.creates_seen == 2  # one never reached Twilio
    assert final.attempts == 1 and final.call_sid == placed.sid and final.shown() == "no answer after 1 try"


async def _read_callback(settings: Settings, message_id: int) -> Callback:
    store = await open_for_reading(settings)
    try:
        found = await store.callbacks.get(message_id)
    finally:
        await store.stop()
    assert found is not None
    return found


async def _read_final(settings: Settings, message_id: int) -> Callback | None:
    found = await _read_callback(settings, message_id)
    return found if found.state not in ("scheduled", "calling") else None


def test_the_cli_schedules_a_call_back_for_the_first_moment_the_rules_allow(shared_data_dir, tmp_path) -> None:
    database = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    settings = Settings(_env_file=None, data_dir=shared_data_dir, database_url=database)

    async def add() -> int:
        store = await open_for_reading(settings)
        try:
            saved = await store.messages.add(
                name="Dana", callback_number=CALLEE, message="Call me", call_sid=None, caller=None,
                conversation_id=None,
            )  # fmt: skip
        finally:
            await store.stop()
        return saved.id

    message_id = asyncio.run(add())
    env = {**os.environ, "DATA_DIR": str(shared_data_dir), "DATABASE_URL": database}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "app", *args]
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    # 10:00 UTC is 04:00 in Chicago: the first moment allowed is 08:00 there, 14:00 UTC.
    scheduled = run("call-back", str(message_id), "--at", "2030-01-07 10:00")
    listed = run("messages", "--json")
    unknown = run("call-back", "999999")
    wrong = run("call-back", str(message_id), "--at", "next tuesday")
    assert scheduled.returncode == 0, scheduled.stderr
    assert scheduled.stdout.strip() == f"Message {message_id}: call-back scheduled for 2030-01-07 14:00 UTC."
    (entry,) = [m for m in json.loads(listed.stdout) if m["id"] == message_id]
    assert entry["callback"]["state"] == "scheduled" and entry["callback"]["due_at"] == "2030-01-07T14:00:00+00:00"
    assert unknown.returncode == 1 and "There is no message 999999." in unknown.stderr
    assert wrong.returncode == 2 and "--at 'next tuesday'" in wrong.stderr


async def test_a_machine_gets_the_voicemail_in_twilios_voice_when_the_engine_takes_no_first_message(
    office, twilio_api, fake_elevenlabs
) -> None:
    twilio_api.callees[CALLEE] = Callee("machine")
    async with office(first_message_allowed=False) as o:
        message = await o.message("Call me", department=None)
        await o.call_back(message)
        placed = await twilio_api.placed_call(0)
        await finished(placed)
        state = await o.state(message)
    assert placed.answer is not None and placed.answer.verbs == ["Say", "Hangup"] and placed.leg is None
    assert placed.answer.said == [voicemail_line(o.svc.settings, "Dana Whitfield", "Call me")]
    assert state.shown() == "voicemail left"


async def test_with_callback_auto_a_message_left_on_a_call_is_called_back_when_allowed(
    office, twilio_api, fake_elevenlabs, fake_model
) -> None:
    arguments = json.dumps({"name": "Dana", "callback_number": "+1 312 555 0147", "message": "Is my area on fibre?"})
    fake_model.queue(Reply.text("I've passed that on.", tool_calls=[("take_message", arguments)]), Reply(tokens=[]))
    async with office(MONDAY_03_CHICAGO, callback="auto", openai_model="fake-model") as o:
        async with TwilioCaller(o.server.http_url, PUBLIC_URL, TWILIO_TOKEN, api=twilio_api) as caller:
            await caller.dial()
            await caller.open_stream()
            await caller.connected()
            await caller.start()
            conv = await fake_elevenlabs.conversation(0)
            async with await SpeechEngineClient.open(
                f"{o.server.ws_url}/ws", api_key=API_KEY, shared_secret=SECRET,
                headers={CALL_SID_HEADER: caller.call_sid},
            ) as client:  # fmt: skip
                await client.init(conv.conversation_id)
                await client.ask("can you ask someone to call me back about fibre")
            (saved,) = [m for m in await o.svc.records.messages.since() if m.call_sid == caller.call_sid]
            scheduled = await o.state(saved)
            await o.passed()
            assert twilio_api.creates_seen == 0  # 03:00 in Chicago
            o.clock.set(MONDAY_09_NEW_YORK)
            placed = await twilio_api.placed_call(0)
    assert scheduled.state == "scheduled" and scheduled.due_at == MONDAY_09_NEW_YORK
    assert placed.to == CALLEE


async def test_a_call_back_waits_for_a_free_line(office, twilio_api, fake_elevenlabs) -> None:
    async with office(max_concurrent_calls=1) as o:
        async with TwilioCaller(o.server.http_url, PUBLIC_URL, TWILIO_TOKEN, api=twilio_api) as caller:
            await caller.dial()
            await caller.open_stream()
            await caller.connected()
            await caller.start()
            await fake_elevenlabs.conversation(0)
            message = await o.message("Call me", department=None)
            await o.call_back(message)
            await o.passed()
            assert twilio_api.creates_seen == 0  # the one line is taken
            waiting = await o.state(message)
            await caller.hang_up()
            await until(lambda: o.svc.telephony.slots.live == 0, what="the line freed")
        o.clock.set(MONDAY_10_CHICAGO + timedelta(minutes=1))
        placed = await twilio_api.placed_call(0)
    assert waiting.state == "scheduled" and waiting.attempts == 0
    assert waiting.due_at == MONDAY_10_CHICAGO + timedelta(minutes=1)
    assert placed.to == CALLEE


async def test_the_call_backs_routes_check_twilios_signature_and_ignore_an_older_try(office, twilio_api) -> None:
    twilio_api.callees[CALLEE] = Callee("busy")
    async with office(callback_attempts=2) as o:
        message = await o.message("Call me", department=None)
        callback = await o.call_back(message)
        placed = await twilio_api.placed_call(0)
        await finished(placed)
        await until(lambda: _settled(o, message), what="the busy try settled")
        twilio = TwilioCaller(o.server.http_url, PUBLIC_URL, TWILIO_TOKEN, caller=OUR_NUMBER, to=CALLEE)
        form = twilio.form(CallStatus="in-progress", Direction="outbound-api", AnsweredBy="human")
        answer = f"{PUBLIC_URL}/callback/answer?callback={callback.id}&attempt=1"
        unsigned = await twilio.post(answer, form, signature="")
        forged = await twilio.post(answer, form, signature="bm90IGEgc2lnbmF0dXJl")
        stale = await twilio.post(answer, form)  # try 1 is over: nobody is being called
        status = f"{PUBLIC_URL}/callback/status?callback={callback.id}&attempt=1"
        late = await twilio.post(status, twilio.form(CallStatus="no-answer", Direction="outbound-api"))
        after = await o.state(message)
    assert unsigned.status == 403 and forged.status == 403
    assert stale.status == 200 and stale.verbs == ["Hangup"]
    assert late.status == 204
    assert after.state == "scheduled" and after.attempts == 1 and after.last_result == "busy"
