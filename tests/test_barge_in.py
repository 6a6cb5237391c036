"""Barge-in end to end: the caller talks over the agent on a whole call (webhook, media stream,
bridge, brain over /ws) with the engine stand-in interrupting as ElevenLabs does, and a model that
streams its answer slowly."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from app.testing.fake_elevenlabs import speech_audio
from app.testing.fake_engine import EngineEvent
from app.testing.fake_openai import Reply
from app.testing.phone import CALLER_CHARS_PER_S, CallRecord, LocalSwitchboard, Phone
from app.testing.twilio_caller import ulaw_frames

LONG = (
    "We have three plans. Basic gives you one hundred megabits for thirty dollars a month, Plus gives you "
    "five hundred megabits for fifty dollars a month, and Gigabit gives you a full gigabit for seventy dollars."
)
SHORT = "Autopay takes five dollars off every monthly bill."
OVER = "sorry, actually, how much is the autopay discount?"


async def utter(phone: Phone, text: str) -> None:
    """The caller says `text`: real audio frames through Twilio, and the words to the engine's "ASR"."""
    frames = ulaw_frames(max(0.4, len(text) / CALLER_CHARS_PER_S), frequency=300)
    phone.board.engine.will_say(phone.caller.call_sid, text, len(frames))
    await phone.caller.send_audio(frames)


async def until(phone: Phone, kind: str, seen: list[EngineEvent]) -> EngineEvent:
    """The engine's next event of this kind on the call (everything on the way is kept in `seen`)."""
    async with asyncio.timeout(30):
        while True:
            got, event = await phone.happenings.get()
            if isinstance(event, EngineEvent):
                seen.append(event)
            if got == kind:
                return event


def counted(board: LocalSwitchboard, name: str, **labels: str) -> float:
    assert board.server is not None
    registry = board.server.app.extensions["switchboard"].metrics.registry
    return registry.get_sample_value(name, labels) or 0.0


async def test_the_caller_talks_over_the_agent_and_the_new_words_are_answered(make_settings, fake_model) -> None:
    fake_model.queue(Reply.text(LONG, inter_token_delay=0.2), Reply.text(SHORT))
    settings = make_settings(openai_base_url=fake_model.base_url, openai_model="fake-model")
    seen: list[EngineEvent] = []
    board = LocalSwitchboard(settings)
    async with board, Phone(board, CallRecord("model"), realtime=False) as phone:
        await phone.greeting(time.perf_counter())
        caller = phone.caller
        await utter(phone, "what plans do you have?")
        await until(phone, "said", seen)  # the agent is answering, and the model still writing
        await caller.wait_for(lambda: bool(caller.media))
        await utter(phone, OVER)
        interrupted = await until(phone, "interrupted", seen)
        answered = await until(phone, "done", seen)
        async with asyncio.timeout(10):
            await fake_model.requests[0].hung_up.wait()
        await phone.hang_up()
    first, second = fake_model.requests
    # The caller heard part of the long answer, then Twilio was told to clear its queue.
    assert interrupted.text and LONG.startswith(interrupted.text) and interrupted.text != LONG
    received = [kind for kind, _ in caller.received]
    assert received.count("clear") == 1
    clear = received.index("clear")
    assert "media" in received[:clear]
    # After the clear the caller hears the new answer and nothing of the old one: the audio the
    # engine had on its way when the caller spoke (under the old event id) was dropped.
    after = [event for event in seen if event.at > interrupted.at and event.kind == "said"]
    assert "".join(event.text for event in after) == answered.text == SHORT
    assert received[clear:].count("media") == sum(len(speech_audio(event.text)) for event in after)
    assert counted(board, "switchboard_dropped_frames_total", leg="elevenlabs", reason="interrupted") == 1
    # The brain stopped the model mid-answer and answered the new words, knowing what was heard.
    assert not first.finished
    assert second.messages[-1] == {"role": "user", "content": OVER}
    assert {"role": "assistant", "content": interrupted.text} in second.messages
    assert counted(board, "switchboard_turns_total", outcome="interrupted") == 1


async def test_an_answer_that_is_over_is_not_interrupted(make_settings, fake_model) -> None:
    """Speaking after the agent has finished is a new turn, not a barge-in: nothing is cleared."""
    settings = make_settings(openai_base_url=fake_model.base_url, openai_model="fake-model")
    seen: list[Any] = []
    board = LocalSwitchboard(settings)
    async with board, Phone(board, CallRecord("model"), realtime=False) as phone:
        await phone.greeting(time.perf_counter())
        await phone.say("hello?", lambda _: None)
        await utter(phone, "and what are your opening hours?")
        await until(phone, "done", seen)
        received = [kind for kind, _ in phone.caller.received]
    assert "clear" not in received and "interrupted" not in [event.kind for event in seen]
    assert counted(board, "switchboard_turns_total", outcome="interrupted") == 0
