"""Turns the Speech Engine could give up on: the holding line goes out well inside the engine's
cascade timeout (and only when needed), and a turn the engine sends again never runs a tool twice,
with a model and in documents-only mode.

Whole calls go through the webhook, media stream, bridge and brain: either with the engine stand-in
(`app.testing.phone`), which abandons a turn after the engine's `cascade_timeout_seconds` and sends
it again as ElevenLabs does, or with the test playing the engine over /ws (`tests.phone`) to send a
turn again at a chosen moment."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from app.brain.holding import HOLD_LINE, holding
from app.testing.fake_openai import FakeOpenAI, Reply
from app.testing.phone import CallRecord, LocalSwitchboard, Phone
from app.testing.speech_engine import SpeechEngineClient
from tests.support.config import SECRET, TARGETS
from tests.support.phone import dialled, messages_of, phone_call, tool_results

MESSAGE = {"name": "Dana Smith", "callback_number": "(415) 555-0100", "message": "Please call me about my bill."}
ASK = "can I leave a message for billing? I'm Dana Smith, 415 555 0100, please call me about my bill"
SAVED = "I've passed your message on, Dana."
TRANSFER = '{"department": "sales"}'


def model(settings: Callable[..., Any], fake: FakeOpenAI, **values: Any) -> Any:
    return settings(openai_base_url=fake.base_url, openai_model="fake-model", transfer_targets=TARGETS, **values)


def like_a_model(tool: str, arguments: str, then: str, first_then_delay: float) -> Callable[[dict[str, Any]], Reply]:
    """A model that asks for `tool` whenever the caller's words are the last thing it sees (so a turn
    sent again gets the same tool call) and says `then` once the tool has answered: the first time
    after `first_then_delay`, later at once."""
    delays = [first_then_delay]

    def reply(body: dict[str, Any]) -> Reply:
        if body["messages"][-1]["role"] == "tool":
            return Reply.text(then, first_token_delay=delays.pop() if delays else 0.0)
        return Reply(tokens=[], tool_calls=[(tool, arguments)])

    return reply


def held_turns(board: LocalSwitchboard) -> float:
    assert board.server is not None
    metrics = board.server.app.extensions["switchboard"].metrics
    return metrics.registry.get_sample_value("switchboard_turns_held_total") or 0.0


@asynccontextmanager
async def call(settings: Any) -> AsyncIterator[tuple[LocalSwitchboard, Phone]]:
    async with LocalSwitchboard(settings) as board, Phone(board, CallRecord("model"), realtime=False) as phone:
        await phone.greeting(time.perf_counter())
        yield board, phone


# --- the holding line -------------------------------------------------------------------------------


async def test_a_tool_turn_past_the_engines_timeout_says_the_holding_line_first_and_saves_once(
    make_settings, fake_model, shared_data_dir
) -> None:
    # The model asks for the tool at once, then takes longer than the engine waits for its answer.
    fake_model.responder = like_a_model("take_message", json.dumps(MESSAGE), SAVED, first_then_delay=2.5)
    settings = model(make_settings, fake_model, cascade_timeout_seconds=2, llm_first_token_timeout=5)
    async with call(settings) as (board, phone):
        assert board.engine.cascade_timeout == 2  # `make configure` set the engine to what the brain reads
        turn = await phone.say(ASK, lambda _: None)
        call_sid = phone.caller.call_sid
        held = held_turns(board)
    assert turn.retries == 0  # the engine heard from the brain in time
    assert turn.agent.startswith(HOLD_LINE) and turn.agent.endswith(SAVED)
    assert held == 1
    saved = await messages_of({"data_dir": shared_data_dir}, call_sid)
    assert [(m.name, m.callback_number) for m in saved] == [("Dana Smith", "+14155550100")]
    assert len(fake_model.requests) == 2


async def test_a_transfer_past_the_engines_timeout_says_the_holding_line_and_is_requested_once(
    make_settings, fake_model
) -> None:
    line = "Putting you through to sales."
    fake_model.responder = like_a_model("transfer_call", TRANSFER, line, first_then_delay=2.5)
    settings = model(make_settings, fake_model, cascade_timeout_seconds=2, llm_first_token_timeout=5)
    async with call(settings) as (board, phone):
        turn = await phone.say("can I talk to someone in sales?", lambda _: None)
    assert turn.retries == 0 and turn.tools == ["transfer_call"]
    assert turn.agent == HOLD_LINE + line
    ((_, form),) = board.twilio.call_updates
    assert dialled(form)[1] == [TARGETS["sales"]] and phone.record.ended_by == "transfer"


async def test_a_fast_answer_gets_no_holding_line(make_settings, fake_model) -> None:
    fake_model.queue(Reply.text("Autopay takes five dollars off every monthly bill."))
    async with call(model(make_settings, fake_model, cascade_timeout_seconds=2)) as (board, phone):
        turn = await phone.say("how much is the autopay discount?", lambda _: None)
        held = held_turns(board)
    assert turn.agent == "Autopay takes five dollars off every monthly bill."
    assert held == 0 and turn.retries == 0


async def test_the_holding_line_does_not_interrupt_the_work_it_covers_and_comes_once() -> None:
    release = asyncio.Event()
    finished: list[str] = []

    async def slow() -> AsyncIterator[str]:
        await release.wait()  # a tool, or a model's second round
        finished.append("tool")
        yield "Done."
        yield " Anything else?"

    pieces = holding(slow(), deadline=time.perf_counter(), spoken=lambda: False)
    assert await anext(pieces) is None  # the deadline passed with nothing said
    waiting = asyncio.ensure_future(anext(pieces))
    release.set()
    assert await waiting == "Done." and finished == ["tool"]
    assert [piece async for piece in pieces] == [" Anything else?"]


async def test_a_turn_given_up_while_it_holds_leaves_nothing_running() -> None:
    closed = asyncio.Event()

    async def never() -> AsyncIterator[str]:
        try:
            await asyncio.Event().wait()
            yield "never said"
        finally:
            closed.set()

    pieces = holding(never(), deadline=time.perf_counter(), spoken=lambda: False)
    assert await anext(pieces) is None
    waiting = asyncio.ensure_future(anext(pieces))
    await asyncio.sleep(0)
    waiting.cancel()  # the engine sent a new transcript: the turn is cancelled
    await asyncio.gather(waiting, return_exceptions=True)
    await pieces.aclose()
    assert closed.is_set()  # the source was closed too (the autouse fixture checks for leaked tasks)


# --- the engine sends a turn again --------------------------------------------------------------------


@pytest.mark.parametrize("new_event_id", [True, False], ids=["new-event-id", "same-event-id"])
async def test_a_turn_the_engine_gives_up_on_and_sends_again_saves_its_message_once(
    make_settings, fake_model, shared_data_dir, new_event_id
) -> None:
    fake_model.responder = like_a_model("take_message", json.dumps(MESSAGE), SAVED, first_then_delay=1.5)
    async with LocalSwitchboard(model(make_settings, fake_model)) as board:
        # An engine that gives up sooner than the brain's holding line (configured by hand, or a slow
        # network eating the margin): it abandons the first attempt while the model is still thinking.
        board.engine.elevenlabs.engine["cascade_timeout_seconds"] = 1.0
        board.engine.retry_with_new_event_id = new_event_id
        async with Phone(board, CallRecord("model"), realtime=False) as phone:
            await phone.greeting(time.perf_counter())
            turn = await phone.say(ASK, lambda _: None)
            call_sid = phone.caller.call_sid
    assert turn.retries >= 1 and turn.agent.endswith(SAVED)
    saved = await messages_of({"data_dir": shared_data_dir}, call_sid)
    assert [(m.name, m.message) for m in saved] == [("Dana Smith", "Please call me about my bill.")]
    first_round_two = fake_model.requests[1]
    if new_event_id:
        # The new event id cancelled the first attempt (its model stream closed); the second asked
        # for the tool again and was told what the first attempt did.
        assert first_round_two.hung_up.is_set() and not first_round_two.finished
        retried = [r for r in fake_model.requests[2:] if r.messages[-1]["role"] == "tool"]
        assert retried and all(tool_results(r)[0]["ok"] for r in retried)
    else:
        # The same event id while the turn runs: the brain carries on with the turn it has.
        assert first_round_two.finished and len(fake_model.requests) == 2


@pytest.mark.parametrize("new_event_id", [True, False], ids=["new-event-id", "same-event-id"])
async def test_a_turn_sent_again_after_its_answer_runs_no_tool_twice(
    serve, call_settings, fake_elevenlabs, fake_model, twilio_api, new_event_id
) -> None:
    """The engine gave up just before the answer came, and sends the turn again: the brain answers
    it as the first time, from what the first attempt did, and does nothing again."""
    line = "I've saved your message, and I'm putting you through to sales."
    calls = [("take_message", json.dumps(MESSAGE)), ("transfer_call", TRANSFER)]

    def reply(body: dict[str, Any]) -> Reply:
        return Reply.text(line) if body["messages"][-1]["role"] == "tool" else Reply(tokens=[], tool_calls=calls)

    fake_model.responder = reply
    async with phone_call(serve, call_settings, fake_elevenlabs, twilio_api) as phone:
        first = await phone.client.ask(ASK)
        again_id = await phone.client.resend(first.event_id, first.event_id + 1 if new_event_id else None)
        again = await phone.client.final(again_id)
        await phone.speak(0.3, event_id=again_id)
        await twilio_api.call_updates.wait(1)
        await phone.caller.hang_up()
        repeated = phone.counted("switchboard_tool_calls_total", tool="take_message", outcome="repeated")
    assert first.text == again.text == line
    assert len(await messages_of(call_settings, phone.caller.call_sid)) == 1
    assert len(twilio_api.call_updates) == 1 and repeated == 1
    first_results, again_results = tool_results(fake_model.requests[1]), tool_results(fake_model.requests[3])
    assert again_results == first_results and all(result["ok"] for result in again_results)


@pytest.mark.parametrize("new_event_id", [True, False], ids=["new-event-id", "same-event-id"])
async def test_documents_only_a_turn_sent_again_runs_no_tool_twice(
    serve, call_settings, fake_elevenlabs, twilio_api, new_event_id
) -> None:
    settings = {**call_settings, "openai_model": None}
    async with phone_call(serve, settings, fake_elevenlabs, twilio_api) as phone:
        client = phone.client
        client.history = [
            {"role": "user", "content": "I'd like to leave a message"},
            {"role": "agent", "content": "Of course, I can take a message. What's your name?"},
            {"role": "user", "content": "Ada Lovelace"},
            {"role": "agent", "content": "Thank you, Ada Lovelace. What number should the team call you back on?"},
            {"role": "user", "content": "415 555 0199"},
            {"role": "agent", "content": "I have 4 1 5, 5 5 5, 0 1 9 9. What would you like me to tell the team?"},
        ]
        saved = await client.ask("please call me about moving my service")
        saved_again = await client.final(
            await client.resend(saved.event_id, saved.event_id + 1 if new_event_id else None)
        )
        person = await client.ask("could I speak to someone in sales please?")
        person_again_id = await client.resend(person.event_id, person.event_id + 5 if new_event_id else None)
        person_again = await client.final(person_again_id)
        await phone.speak(0.3, event_id=person_again_id)
        await twilio_api.call_updates.wait(1)
        await phone.caller.hang_up()
    assert saved.text.startswith("Thank you, Ada Lovelace. I've passed your message on")
    assert saved_again.text == saved.text
    assert person.text == person_again.text == "Of course. I'll put you through to sales now."
    messages = await messages_of(call_settings, phone.caller.call_sid)
    assert [(m.name, m.callback_number, m.message) for m in messages] == [
        ("Ada Lovelace", "+14155550199", "please call me about moving my service")
    ]
    ((_, form),) = twilio_api.call_updates
    assert dialled(form)[1] == [TARGETS["sales"]]


async def test_the_engine_stand_in_drops_what_comes_for_a_turn_it_gave_up_on(serve, fake_model) -> None:
    """As ElevenLabs drops responses of an abandoned or interrupted turn, so does the stand-in."""
    fake_model.queue(Reply.text("A late answer.", first_token_delay=0.5), Reply.text("On time."))
    settings = {"openai_base_url": fake_model.base_url, "openai_model": "fake-model"}
    async with (
        serve(**settings) as server,
        await SpeechEngineClient.open(f"{server.ws_url}/ws", shared_secret=SECRET) as client,
    ):
        late = await client.say("hello?")
        client.abandon(late)
        await client.wait_for(lambda: client.dropped >= 2)  # the late answer's text and its final
        on_time = await client.ask("are you there?")
    assert client.answers[late].chunks == [] and client.answers[late].finals == 0
    assert on_time.text == "On time."
