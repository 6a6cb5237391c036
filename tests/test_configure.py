"""`make configure` against local stand-ins of the ElevenLabs and Twilio APIs, through the real SDKs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app import configure
from app.testing.fake_elevenlabs import FakeElevenLabs
from app.testing.fake_twilio_api import FakeTwilioApi
from tests.support.config import API_KEY, ENGINE_ID, SECRET

ACCOUNT = "AC" + "1" * 32
TOKEN = "twilio-token"
NUMBER = "+15551230000"
PUBLIC = "https://switchboard.example"


@pytest.fixture
async def twilio_api() -> AsyncIterator[FakeTwilioApi]:
    async with FakeTwilioApi(ACCOUNT, TOKEN, [NUMBER, "+15551239999"]) as fake:
        yield fake


@pytest.fixture
def settings(make_settings, fake_elevenlabs: FakeElevenLabs, twilio_api: FakeTwilioApi) -> Any:
    return make_settings(
        public_url=PUBLIC,
        elevenlabs_api_key=API_KEY,
        elevenlabs_base_url=fake_elevenlabs.base_url,
        speech_engine_id=ENGINE_ID,
        twilio_account_sid=ACCOUNT,
        twilio_auth_token=TOKEN,
        twilio_phone_number=NUMBER,
        twilio_api_base_url=twilio_api.base_url,
    )


async def run(settings: Any, dry_run: bool = False) -> tuple[int, str]:
    """The command is synchronous (the SDKs' blocking clients); the fakes serve on this loop."""
    lines: list[str] = []
    code = await asyncio.to_thread(configure.run, settings, dry_run=dry_run, say=lines.append)
    return code, "\n".join(lines)


def number(fake: FakeTwilioApi, phone: str = NUMBER) -> dict[str, Any]:
    return next(n for n in fake.numbers.values() if n["phone_number"] == phone)


async def test_configures_engine_and_number(settings, fake_elevenlabs, twilio_api) -> None:
    code, output = await run(settings)
    assert code == 0, output
    engine = fake_elevenlabs.engine
    assert engine["speech_engine"]["ws_url"] == "wss://switchboard.example/ws"
    assert engine["speech_engine"]["request_headers"] == {
        "x-team": "support",  # headers we do not manage are kept
        "x-api-key": SECRET,
        "x-call-sid": {"variable_name": "call_sid"},
    }
    assert engine["asr"]["user_input_audio_format"] == "ulaw_8000"
    assert engine["asr"]["quality"] == "high"  # and so are the other fields
    assert engine["tts"]["agent_output_audio_format"] == "ulaw_8000"
    assert engine["tts"]["model_id"] == "eleven_flash_v2" and engine["tts"]["voice_id"] == "voice_1"
    assert engine["overrides"] == {"first_message": True}  # so the greeting can be sent
    assert engine["cascade_timeout_seconds"] == settings.cascade_timeout_seconds == 8  # what the brain speaks within
    assert "by hand" not in output
    configured = number(twilio_api)
    assert configured["voice_url"] == f"{PUBLIC}/incoming-call" and configured["voice_method"] == "POST"
    assert configured["voice_fallback_url"] == f"{PUBLIC}/connect-action"
    assert number(twilio_api, "+15551239999")["voice_url"] == "https://demo.twilio.com/welcome/voice/"
    assert SECRET not in output and API_KEY not in output


async def test_dry_run_prints_exactly_what_would_change_and_changes_nothing(
    settings, fake_elevenlabs, twilio_api
) -> None:
    before = dict(fake_elevenlabs.engine)
    code, output = await run(settings, dry_run=True)
    assert code == 0, output
    assert fake_elevenlabs.engine_patches == [] and twilio_api.number_updates == []
    assert fake_elevenlabs.engine == before
    assert "speech_engine.ws_url: 'wss://old.example/ws' -> 'wss://switchboard.example/ws'" in output
    assert "speech_engine.request_headers.x-api-key: (unset) -> (SHARED_SECRET)" in output
    assert "tts.model_id: 'eleven_turbo_v2' -> 'eleven_flash_v2'" in output
    assert "asr.user_input_audio_format: 'pcm_16000' -> 'ulaw_8000'" in output
    assert "overrides.first_message: (unset) -> True" in output
    assert "cascade_timeout_seconds: 5 -> 8.0" in output
    assert f"voice_url: 'https://demo.twilio.com/welcome/voice/' -> '{PUBLIC}/incoming-call'" in output
    assert "voice_method" not in output  # already POST
    assert output.count("(dry run: nothing changed)") == 2
    assert SECRET not in output


async def test_second_run_changes_nothing(settings, fake_elevenlabs, twilio_api) -> None:
    await run(settings)
    patches, updates = len(fake_elevenlabs.engine_patches), len(twilio_api.number_updates)
    code, output = await run(settings)
    assert code == 0
    assert output.count("already set: nothing to change") == 2
    assert (len(fake_elevenlabs.engine_patches), len(twilio_api.number_updates)) == (patches, updates)


async def test_the_cascade_timeout_is_the_one_the_brain_reads(make_settings, settings, fake_elevenlabs) -> None:
    code, output = await run(make_settings(**{**settings.model_dump(), "cascade_timeout_seconds": 3.5}))
    assert code == 0, output
    assert fake_elevenlabs.engine["cascade_timeout_seconds"] == 3.5
    (patch,) = fake_elevenlabs.engine_patches
    assert patch["cascade_timeout_seconds"] == 3.5 and patch["overrides"] == {"first_message": True}


async def test_a_greeting_the_api_cannot_allow_is_named_as_a_step_by_hand(settings, fake_elevenlabs) -> None:
    fake_elevenlabs.patch_ignores = {"overrides"}
    code, output = await run(settings)
    assert code == 0, output
    assert fake_elevenlabs.engine["speech_engine"]["ws_url"] == "wss://switchboard.example/ws"  # the rest is set
    assert (
        f"set once by hand: the engine did not accept the first-message override through the API. In "
        f"ElevenLabs, allow overrides of the first message for {ENGINE_ID}" in output
    )


async def test_no_greeting_leaves_the_overrides_alone(make_settings, settings, fake_elevenlabs) -> None:
    code, output = await run(make_settings(**{**settings.model_dump(), "greeting": ""}))
    assert code == 0, output
    assert fake_elevenlabs.engine["overrides"] == {} and "overrides" not in output


async def test_unknown_number_and_bad_key_are_reported_plainly(make_settings, settings, fake_elevenlabs) -> None:
    bad = make_settings(
        **{**settings.model_dump(), "elevenlabs_api_key": "wrong", "twilio_phone_number": "+15550000000"}
    )
    code, output = await run(bad)
    assert code == 1
    assert "refused (HTTP 401)" in output
    assert "+15550000000: not a number of account" in output
    assert "wrong" not in output


async def test_missing_settings_are_named(make_settings) -> None:
    code, output = await run(make_settings(shared_secret=None))
    assert code == 1
    assert "Speech Engine: skipped, set ELEVENLABS_API_KEY, SPEECH_ENGINE_ID, PUBLIC_URL, SHARED_SECRET" in output
    assert (
        "Twilio number: skipped, set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_PHONE_NUMBER, PUBLIC_URL" in output
    )
