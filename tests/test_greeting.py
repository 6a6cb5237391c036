"""The greeting: heard at pickup before the caller says anything, off with `GREETING=`, part of the
history the model sees, and never a reason for ElevenLabs to refuse the call."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.records.queries import get_call
from app.settings import Settings
from app.testing.fake_elevenlabs import OVERRIDE_REFUSED, FakeElevenLabs
from app.testing.fake_openai import Reply
from app.testing.phone import CallRecord, LocalSwitchboard, Phone
from tests.support.config import API_KEY, ENGINE_ID

GREETING = "Thanks for calling Kestrel Broadband. How can I help?"


def test_greeting_names_the_company_and_an_empty_greeting_is_none(tmp_path: Path) -> None:
    assert Settings(_env_file=None).first_message == GREETING
    assert Settings(_env_file=None, company_name="Acme", greeting="Hi, {COMPANY_NAME} here.").first_message == (
        "Hi, Acme here."
    )
    env = tmp_path / ".env"
    env.write_text("GREETING=\nCOMPANY_NAME=Acme\nOPENAI_MODEL=\n")
    settings = Settings(_env_file=env)
    assert settings.first_message is None  # GREETING= turns it off...
    assert settings.openai_model is None  # ...while any other empty value still means "not set"


async def test_the_caller_hears_the_greeting_before_saying_anything(make_settings, tmp_path) -> None:
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'records.sqlite3'}")
    async with LocalSwitchboard(settings) as board:
        record = CallRecord("documents")
        async with Phone(board, record, realtime=False) as phone:
            await phone.greeting(time.perf_counter())
            conversation = board.engine.elevenlabs.conversations[0]
            heard = list(phone.caller.media)
            assert conversation.user_audio == []  # the caller has not made a sound
            call_sid = phone.caller.call_sid
        records = board.server.app.extensions["switchboard"].records
        await records.recorder.flushed()
        async with records.engine.connect() as conn:
            kept = await get_call(conn, call_sid)
    assert kept is not None and kept.greeting == GREETING  # the call's record has it too
    assert record.greeting == GREETING
    assert heard, "no greeting audio reached the caller"
    assert conversation.initiation["conversation_config_override"] == {"agent": {"first_message": GREETING}}
    assert conversation.history == [{"role": "agent", "content": GREETING}]


async def test_the_greeting_is_in_the_history_the_model_gets_on_the_first_turn(make_settings, fake_model) -> None:
    fake_model.queue(Reply.text("Autopay takes five dollars off every monthly bill."))
    settings = make_settings(openai_base_url=fake_model.base_url, openai_model="fake-model")
    async with LocalSwitchboard(settings) as board, Phone(board, CallRecord("model"), realtime=False) as phone:
        await phone.greeting(time.perf_counter())
        turn = await phone.say("how much is the autopay discount?", lambda _: None)
    assert turn.agent == "Autopay takes five dollars off every monthly bill."
    conversation = [m for m in fake_model.requests[0].messages if m["role"] != "system"]
    assert conversation[0] == {"role": "assistant", "content": GREETING}
    assert conversation[-1] == {"role": "user", "content": "how much is the autopay discount?"}


async def test_an_empty_greeting_turns_it_off(make_settings, fake_model) -> None:
    settings = make_settings(greeting="", openai_base_url=fake_model.base_url, openai_model="fake-model")
    record = CallRecord("model")
    async with LocalSwitchboard(settings) as board, Phone(board, record, realtime=False) as phone:
        await phone.greeting(time.perf_counter())
        turn = await phone.say("hello?", lambda _: None)
        initiation = board.engine.elevenlabs.conversations[0].initiation
    assert record.greeting is None and turn.agent
    assert "conversation_config_override" not in initiation
    assert [m["role"] for m in fake_model.requests[0].messages] == ["system", "user", "user"]  # no agent line


async def test_an_engine_that_does_not_allow_the_greeting_still_takes_the_call(make_settings) -> None:
    board = LocalSwitchboard(make_settings())
    board.engine.elevenlabs.patch_ignores = {"overrides"}  # the override cannot be allowed through the API
    record = CallRecord("documents")
    async with board, Phone(board, record, realtime=False) as phone:
        await phone.greeting(time.perf_counter())  # waits for nothing: no greeting is coming
        turn = await phone.say("when is my bill due?", lambda _: None)
        initiation = board.engine.elevenlabs.conversations[0].initiation
    assert "21 days" in turn.agent
    assert "conversation_config_override" not in initiation  # sending it would have had the call refused


async def test_the_stand_in_refuses_an_override_its_engine_does_not_allow() -> None:
    """As ElevenLabs does: an error event, then close 1008 (so the bridge must not send one)."""
    async with FakeElevenLabs(API_KEY, ENGINE_ID) as fake:
        async with httpx.AsyncClient() as http:
            signed = (
                await http.get(
                    f"{fake.base_url}/v1/convai/conversation/get-signed-url",
                    params={"agent_id": ENGINE_ID},
                    headers={"xi-api-key": API_KEY},
                )
            ).json()["signed_url"]
        async with connect(signed) as ws:
            override = {"agent": {"first_message": "Hello!"}}
            await ws.send(
                json.dumps({"type": "conversation_initiation_client_data", "conversation_config_override": override})
            )
            error = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1008
    assert error["error_event"]["message"] == OVERRIDE_REFUSED
