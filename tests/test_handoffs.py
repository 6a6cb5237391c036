"""Handoffs on whole calls through the real routes: a department's schedule, a warm transfer the Twilio
stand-in screens as Twilio does (whisper, press 1, `<Dial action>` with real DialCallStatus values),
the caller back with the agent over a new stream when nobody takes it, and a closed department
never dialled. The clock is set: nothing depends on when the tests run."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.notify.events import call_ended_data
from app.records.queries import get_call
from app.records.schema import outbox
from app.records.store import open_for_reading
from app.settings import Settings
from app.speech_engine_contract import CALL_SID_HEADER
from app.testing.clock import SetClock
from app.testing.fake_openai import Reply
from app.testing.speech_engine import SpeechEngineClient
from app.testing.twilio_caller import TwilioCaller, Webhook
from app.testing.twilio_dial import Colleague
from tests.support.config import API_KEY, PUBLIC_URL, SECRET, TWILIO_TOKEN
from tests.support.phone import messages_of, phone_call, tool_results
from tests.support.waiting import until

SALES = "+12025550143"
DEPARTMENTS = f"""
[departments.sales]
number = "{SALES}"
handles = "new plans, upgrades and prices"
time_zone = "America/New_York"
holidays = ["2026-12-25"]

[departments.sales.hours]
mon = "09:00-17:30"
tue = "09:00-17:30"
wed = "09:00-17:30"
thu = "09:00-17:30"
fri = "09:00-17:30"
"""
PASSWORD = "correct horse battery staple"
MONDAY_NOON = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)  # 12:00 in New York
SATURDAY_EVENING = datetime(2026, 11, 21, 23, 0, tzinfo=UTC)  # 18:00 in New York
DANA = {"name": "Dana Smith", "callback_number": "(415) 555-0100"}
LINE = "Of course, I'll put you through to our sales team now."


class CallTimes:
    """A clock with a time of its own for some calls (as a scenario's `at:` gives one): opening hours
    decided during a call must ask for that call's time."""

    def __init__(self, default: datetime) -> None:
        self.default = default
        self.at: dict[str, datetime] = {}

    def now(self, call_sid: str | None = None) -> datetime:
        return self.at.get(call_sid or "", self.default)


ASKED = {"department": "sales", "reason": "wants the faster plan", "caller_name": "Dana"}
TRANSFER = ("transfer_call", json.dumps(ASKED))


@pytest.fixture
def handoff_settings(call_settings, fake_elevenlabs, tmp_path) -> dict[str, Any]:
    """A server that answers calls, with the sales department of a file, ringing briefly, and an
    engine that lets each conversation say what it says first (the greeting, or why the caller is back)."""
    (tmp_path / "departments.toml").write_text(DEPARTMENTS)
    fake_elevenlabs.engine["overrides"] = {"first_message": True}
    return {
        **call_settings,
        "transfer_targets": {},
        "departments_file": tmp_path / "departments.toml",
        "ring_seconds": 1,
    }


async def record_of(settings: dict[str, Any], call_sid: str) -> dict[str, Any]:
    """The call as `python -m app calls show SID --json` prints it, with its call.ended data."""
    store = await open_for_reading(Settings(_env_file=None, data_dir=settings["data_dir"]))
    try:
        async with store.engine.connect() as conn:
            detail = await get_call(conn, call_sid)
            assert detail is not None
            ended = await call_ended_data(conn, call_sid, None)
            announced = (await conn.execute(select(outbox.c.type).where(outbox.c.call_sid == call_sid))).scalars()
            return {**detail.to_json(), "call_ended": ended, "announced": list(announced)}
    finally:
        await store.stop()


async def test_a_colleague_who_presses_1_is_connected_recorded_once_and_a_second_dial_action_changes_nothing(
    serve, handoff_settings, fake_elevenlabs, fake_model, twilio_api, refused
) -> None:
    colleague = twilio_api.colleagues[SALES] = Colleague("takes")
    fake_model.queue(Reply.text(LINE, tool_calls=[TRANSFER]), Reply(tokens=[]))
    # A webhook that never answers: call.ended stays in the outbox, to be counted.
    settings = {**handoff_settings, "notify_webhook_url": f"http://{refused}/hook", "notify_webhook_secret": "s"}
    async with phone_call(serve, settings, fake_elevenlabs, twilio_api, clock=SetClock(MONDAY_NOON)) as phone:
        await phone.client.ask("can I talk to someone about a faster plan? I'm Dana")
        await phone.speak(0.4)
        await twilio_api.wait_for(lambda: len(twilio_api.dials) == 1)
        await phone.ended()
        ((sid, form),) = twilio_api.call_updates
        # The same dial action again, now saying nobody answered: it changes nothing.
        action = Webhook.parse(200, form["Twiml"]).dial["action"]
        again = await phone.caller.post(action, phone.caller.form(CallStatus="completed", DialCallStatus="no-answer"))
        await phone.svc.records.recorder.flushed()
    assert again.verbs == ["Hangup"] and twilio_api.legs == {}
    (dial,) = twilio_api.dials
    assert dial.number == SALES and dial.status == "completed" and dial.key == "1"
    whisper = " ".join(colleague.heard)
    assert "for sales from Dana, calling from" in whisper and "5 5 5, 1 2 3, 4 5 6 7" in whisper
    assert "Their request: wants the faster plan." in whisper
    assert "Press 1" in whisper
    assert dial.action is not None and dial.action.verbs == ["Hangup"] and dial.leg is None
    assert twilio_api.legs == {}  # nobody came back to the agent
    call = await record_of(settings, sid)
    assert call["transfer"] == {"department": "sales", "result": "connected"}
    assert call["ended"] == "transferred to sales" and call["outcome"] == "transferred"
    assert call["call_ended"]["ended"] == "transferred"
    assert call["call_ended"]["transfer"] == {"department": "sales", "result": "connected"}
    assert call["announced"] == ["call.ended"]  # once: leaving the first stream did not end the call


async def test_nobody_answering_brings_the_caller_back_and_a_message_is_left_for_the_department(
    serve, handoff_settings, fake_elevenlabs, fake_model, twilio_api
) -> None:
    twilio_api.colleagues[SALES] = Colleague("no_answer")
    fake_model.queue(Reply.text(LINE, tool_calls=[TRANSFER]), Reply(tokens=[]))
    settings = {**handoff_settings, "admin_password": PASSWORD}
    async with phone_call(serve, settings, fake_elevenlabs, twilio_api, clock=SetClock(MONDAY_NOON)) as phone:
        await phone.client.ask("can I talk to someone about a faster plan?")
        await phone.speak(0.4)
        sid = phone.caller.call_sid
        back = await twilio_api.leg(sid)  # the same call, on a new media stream
        conversation = await fake_elevenlabs.conversation(1)
        await back.wait_for(lambda: bool(back.media))  # the agent's first words, heard
        (dial,) = twilio_api.dials
        assert dial.status == "no-answer" and dial.whisper is None  # rang out: nobody heard a whisper
        said = conversation.initiation["conversation_config_override"]["agent"]["first_message"]
        assert said == (
            "Sorry, nobody in sales could take your call just now. I can take a message for sales, and they'll "
            "call you back."
        )
        fake_model.queue(
            Reply(
                tokens=[],
                tool_calls=[("take_message", json.dumps({**DANA, "message": "Call me about plans."}))],
            ),
            Reply.text("Done, Dana. Sales will call you back."),
        )
        headers = {CALL_SID_HEADER: sid}
        async with await SpeechEngineClient.open(
            f"{phone.server.ws_url}/ws", api_key=API_KEY, shared_secret=SECRET, headers=headers
        ) as brain:
            await brain.init(conversation.conversation_id)
            brain.history = list(conversation.history)
            answer = await brain.ask("yes please, it's Dana Smith, call me about plans")
        await back.hang_up()
        await phone.observed.wait(lambda seen: seen.ended.count(sid) == 2)
        await phone.svc.records.recorder.flushed()
        async with httpx.AsyncClient(base_url=phone.server.http_url, auth=("admin", PASSWORD)) as browser:
            page = await browser.get(f"/admin/calls/{sid}")
    assert "<dt>Transfer</dt><dd>sales: no answer, back to the agent</dd>" in page.text  # the review page
    first, _, message_turn, _ = fake_model.requests
    assert "transfer_call" in [spec["function"]["name"] for spec in first.body["tools"]]
    offered = [spec["function"]["name"] for spec in message_turn.body["tools"]]
    assert "transfer_call" not in offered  # back from a transfer: one per call
    told = next(m["content"] for m in message_turn.messages if m["content"].startswith("<departments>"))
    assert "come back to you from a transfer to sales" in told and "no answer" in told
    (result,) = tool_results(fake_model.requests[3])
    assert result["ok"] and "sales team will call back" in result["result"]
    assert answer.text == "Done, Dana. Sales will call you back."
    (message,) = await messages_of(handoff_settings, sid)
    assert (message.name, message.department, message.callback_number) == ("Dana Smith", "sales", "+14155550100")
    call = await record_of(handoff_settings, sid)
    assert call["transfer"] == {"department": "sales", "result": "no_answer"}
    assert call["outcome"] == "message" and call["end_reason"] == "caller_hung_up"
    assert call["call_ended"]["transfer"] == {"department": "sales", "result": "no_answer"}


async def test_a_closed_department_is_never_dialled_and_the_agent_says_when_it_opens(
    serve, handoff_settings, fake_elevenlabs, fake_model, twilio_api
) -> None:
    sorry = "Sales is closed now; it opens on Monday at 9 am. Shall I take a message for sales?"
    fake_model.queue(Reply(tokens=[], tool_calls=[TRANSFER]), Reply.text(sorry))
    clock = CallTimes(MONDAY_NOON)
    async with phone_call(serve, handoff_settings, fake_elevenlabs, twilio_api, clock=clock) as phone:
        clock.at[phone.caller.call_sid] = SATURDAY_EVENING  # this call's time, not the app's
        answer = await phone.client.ask("can I talk to someone in sales?")
        await phone.hung_up()
        await phone.svc.records.recorder.flushed()
        sid = phone.caller.call_sid
    first, second = fake_model.requests
    told = next(m["content"] for m in first.messages if m["content"].startswith("<departments>"))
    assert "Saturday 21 November 2026, 6 pm New York time" in told
    assert "sales (new plans, upgrades and prices): closed now, opens on Monday at 9 am (New York time)" in told
    (result,) = tool_results(second)
    assert result["ok"] is False and "opens on Monday at 9 am (New York time)" in result["error"]
    assert 'take_message with department "sales"' in result["error"]
    assert answer.text == sorry
    assert twilio_api.call_updates == [] and twilio_api.dials == []  # nothing dialled
    call = await record_of(handoff_settings, sid)
    assert call["transfer"] == {"department": "sales", "result": "closed"}
    assert call["turn_list"][0]["tools"] == [{"tool": "transfer_call", "decision": "closed"}]


async def test_the_keypad_with_everyone_closed_brings_the_caller_back_saying_when_sales_opens(
    serve, handoff_settings, fake_elevenlabs, fake_model, twilio_api
) -> None:
    clock = CallTimes(MONDAY_NOON)
    async with phone_call(serve, handoff_settings, fake_elevenlabs, twilio_api, clock=clock) as phone:
        clock.at[phone.caller.call_sid] = SATURDAY_EVENING
        await phone.pressed("0")
        back = await twilio_api.leg(phone.caller.call_sid)
        conversation = await fake_elevenlabs.conversation(1)
        await back.wait_for(lambda: bool(back.media))
        await back.hang_up()
    said = conversation.initiation["conversation_config_override"]["agent"]["first_message"]
    assert said == (
        "Sorry, nobody can take your call right now: sales is closed. It opens on Monday at 9 am, New York time. "
        "I can take a message for sales, and they'll call you back."
    )
    assert twilio_api.dials == [] and fake_model.requests == []


async def test_an_edited_departments_file_takes_effect_without_a_restart_and_a_broken_edit_is_ignored(
    serve, handoff_settings, fake_elevenlabs, fake_model, twilio_api, tmp_path: Path, caplog
) -> None:
    path = handoff_settings["departments_file"]
    async with phone_call(serve, handoff_settings, fake_elevenlabs, twilio_api, clock=SetClock(MONDAY_NOON)) as phone:
        directory = phone.svc.directory
        directory.every = 0.02
        path.write_text(DEPARTMENTS.replace("[departments.sales]", "[departments.sales]\nscreen = false"))
        await until(lambda: not directory.get("sales").screen, what="the edited file read")  # type: ignore[union-attr]
        version = directory.version
        path.write_text(DEPARTMENTS + '\n[departments.billing]\nnumber = "+1202"\n')
        await until(lambda: "billing: number" in caplog.text, what="the broken edit's mistakes logged")
        assert directory.version == version and directory.names == ["sales"]  # the last good ones stay
        fake_model.queue(Reply.text(LINE, tool_calls=[TRANSFER]), Reply(tokens=[]))
        await phone.client.ask("can I talk to someone in sales?")
        await phone.speak(0.4)
        await twilio_api.call_updates.wait(1)
    ((_, form),) = twilio_api.call_updates
    assert "<Number>+12025550143</Number>" in form["Twiml"]  # unscreened now: no whisper URL


@pytest.mark.parametrize(
    ("answers", "result", "first_words", "whisper_heard"),
    [
        ("declines", "declined", "Sorry, nobody in sales could take your call just now.", True),
        ("silent", "declined", "Sorry, nobody in sales could take your call just now.", True),
        ("voicemail", "voicemail", "Sorry, nobody in sales could take your call just now.", False),
        ("busy", "busy", "Sorry, the sales line is busy just now.", False),
        ("fails", "failed", "Sorry, I couldn't get through to sales just now.", False),
    ],
)
async def test_whatever_keeps_a_colleague_from_taking_the_call_the_caller_is_back_with_the_agent(
    serve, handoff_settings, fake_elevenlabs, fake_model, twilio_api, answers, result, first_words, whisper_heard
) -> None:
    colleague = twilio_api.colleagues[SALES] = Colleague(answers)
    fake_model.queue(Reply.text(LINE, tool_calls=[TRANSFER]), Reply(tokens=[]))
    async with phone_call(serve, handoff_settings, fake_elevenlabs, twilio_api, clock=SetClock(MONDAY_NOON)) as phone:
        await phone.client.ask("can I talk to someone in sales?")
        await phone.speak(0.4)
        back = await twilio_api.leg(phone.caller.call_sid)
        conversation = await fake_elevenlabs.conversation(1)
        await back.wait_for(lambda: bool(back.media))
        await back.hang_up()
        await phone.observed.wait(lambda seen: len(seen.ended) == 2)
        await phone.svc.records.recorder.flushed()
    said = conversation.initiation["conversation_config_override"]["agent"]["first_message"]
    assert said.startswith(first_words) and said.endswith("I can take a message for sales, and they'll call you back.")
    assert bool(colleague.heard) is whisper_heard  # a voicemail is told nothing about the caller
    assert back.webhook is not None and back.webhook.parameters["transfer"] == f"sales:{result}"
    call = await record_of(handoff_settings, phone.caller.call_sid)
    assert call["transfer"] == {"department": "sales", "result": result}


async def test_the_transfer_routes_check_twilios_signature_and_a_dial_action_for_no_transfer_changes_nothing(
    serve, handoff_settings
) -> None:
    routes = [
        "/transfer/whisper?call=CA{sid}&department=sales",
        "/transfer/screen?call=CA{sid}&department=sales",
        "/dial-action?department=sales",
        "/transfer/back?department=sales&result=closed",
    ]
    async with serve(clock=SetClock(MONDAY_NOON), **handoff_settings) as server:
        caller = TwilioCaller(server.http_url, PUBLIC_URL, TWILIO_TOKEN)
        form = caller.form(CallStatus="in-progress", DialCallStatus="no-answer", Digits="1")
        forged = [
            await caller.post(f"{PUBLIC_URL}{route.format(sid=caller.call_sid[2:])}", form, signature="Zm9yZ2Vk")
            for route in routes
        ]
        unknown = await caller.post(f"{PUBLIC_URL}/dial-action?department=sales", form)
        svc = server.app.extensions["switchboard"]
        rejected = {
            reason: svc.metrics.registry.get_sample_value("switchboard_twilio_rejected_total", {"reason": reason})
            for reason in ("whisper_signature", "screen_signature", "dial_action_signature", "back_signature")
        }
        await svc.records.recorder.flushed()
    assert [hook.status for hook in forged] == [403] * 4
    assert rejected == dict.fromkeys(rejected, 1.0)
    # A dial of no transfer of ours: never silence, and no record of a call or a transfer.
    assert unknown.status == 200 and unknown.verbs == ["Say", "Hangup"]
    store = await open_for_reading(Settings(_env_file=None, data_dir=handoff_settings["data_dir"]))
    try:
        async with store.engine.connect() as conn:
            assert await get_call(conn, caller.call_sid) is None
    finally:
        await store.stop()


async def test_without_a_model_are_you_open_on_saturday_is_answered_from_the_schedule_at_the_calls_time(
    serve, handoff_settings, fake_elevenlabs, twilio_api
) -> None:
    clock = CallTimes(MONDAY_NOON)
    settings = {**handoff_settings, "openai_model": None}
    async with phone_call(serve, settings, fake_elevenlabs, twilio_api, clock=clock) as phone:
        clock.at[phone.caller.call_sid] = datetime(2026, 12, 24, 17, 0, tzinfo=UTC)  # Thursday noon, Christmas Eve
        saturday = await phone.client.ask("are you open on Saturday?")
        tomorrow = await phone.client.ask("is sales open tomorrow?")
        now = await phone.client.ask("when is sales open?")
        await phone.hung_up()
    assert saturday.text == "Sales (New York time): on Saturday 26 December, closed."
    assert tomorrow.text == "Sales (New York time): on Friday 25 December, closed (a holiday)."
    assert now.text == (
        "Sales is open now, until 5:30 pm, New York time. Its hours are Monday to Friday 9 am to 5:30 pm; "
        "Saturday and Sunday closed, New York time."
    )
