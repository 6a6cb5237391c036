"""Call-backs end to end: the agent returns a caller's message by phone through the Twilio REST stand-in
(Calls.json with answering-machine detection), the same bridge and brain, inside the callee's
calling hours, with the clock set by the test."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.callbacks.store import Callback
from app.records.messages import Message
from app.records.schema import calls
from app.speech_engine_contract import CALL_SID_HEADER
from app.testing.clock import SetClock
from app.testing.fake_elevenlabs import first_message
from app.testing.live_server import LiveServer
from app.testing.speech_engine import SpeechEngineClient
from app.testing.twilio_dial import Colleague
from tests.support.config import API_KEY, PUBLIC_URL, SECRET
from tests.support.phone import FAST_ACTIONS, FAST_BRIDGE

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
    async def open_office(at: datetime = MONDAY_10_CHICAGO, **overrides: Any) -> AsyncIterator[Office]:
        fake_elevenlabs.engine["overrides"] = {"first_message": True}
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
            twilio_api.realtime = True
            yield Office(server, clock, settings)

    return open_office


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
        record = await record_of(o, placed.sid)
        assert record.direction == "outbound" and record.message_id == message.id
        assert record.transferred_to == "sales"
