"""Without a model the tools still work: a person, a message, goodbye and the keypad's 0, on whole
calls through the webhook, bridge, engine stand-in and brain, each through the gated Toolbox."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.testing.phone import CallRecord, LocalSwitchboard, Phone
from tests.support.config import TARGETS
from tests.support.phone import messages_of
from tests.support.servers import postgres_server


@asynccontextmanager
async def call(make_settings, **settings: object) -> AsyncIterator[Phone]:
    values = {"transfer_targets": TARGETS, **settings}
    async with LocalSwitchboard(make_settings(**values)) as board:
        async with Phone(board, CallRecord("documents"), realtime=False) as phone:
            await phone.greeting(time.perf_counter())
            yield phone


async def say(phone: Phone, text: str) -> str:
    return (await phone.say(text, lambda _: None)).agent


async def test_a_request_for_a_person_is_transferred_where_the_settings_say(make_settings) -> None:
    async with call(make_settings) as phone:
        line = await say(phone, "could I speak to someone in support please?")
        tools = phone.record.turns[-1].tools
    assert line == "Of course. I'll put you through to support now."
    assert tools == ["transfer_call"]
    assert phone.record.transfer == {"department": "support", "number": TARGETS["support"], "said": ""}
    assert phone.record.ended_by == "transfer"


async def test_a_message_is_taken_read_back_and_saved(make_settings, shared_data_dir) -> None:
    async with call(make_settings) as phone:
        lines = [
            await say(phone, "I'd like to leave a message"),
            await say(phone, "my name is Ada Lovelace"),
            await say(phone, "it's 415 555 0123"),
            await say(phone, "no, that's wrong"),
            await say(phone, "415 555 0199"),
            await say(phone, "please call me about moving my service"),
        ]
        call_sid = phone.caller.call_sid
        tools = phone.record.turns[-1].tools
        goodbye = await say(phone, "no, that's it, thanks")
    assert lines[0].endswith("What's your name?")
    assert lines[1] == "Thank you, Ada Lovelace. What number should the team call you back on?"
    assert lines[2] == "I have 4 1 5, 5 5 5, 0 1 2 3. What would you like me to tell the team?"
    assert lines[3].endswith("What number should the team call you back on?")
    assert "4 1 5, 5 5 5, 0 1 9 9" in lines[5] and lines[5].endswith("Is there anything else I can help with?")
    assert tools == ["take_message"]
    assert goodbye.endswith("Goodbye.") and phone.record.ended_by == "agent"
    saved = await messages_of({"data_dir": shared_data_dir}, call_sid)
    assert [(m.name, m.callback_number, m.message) for m in saved] == [
        ("Ada Lovelace", "+14155550199", "please call me about moving my service")
    ]


async def test_a_message_given_in_one_go_is_saved_at_once_for_the_department_named(
    make_settings, shared_data_dir
) -> None:
    async with call(make_settings) as phone:
        line = await say(
            phone,
            "I want to leave a message for sales, my name is Ana Ruiz, call me back at 212 867 5309 about a double "
            "charge",
        )
        call_sid = phone.caller.call_sid
        tools = phone.record.turns[-1].tools
    assert line == (
        "Thank you, Ana Ruiz. I've passed your message on, and the sales team will call you back on "
        "2 1 2, 8 6 7, 5 3 0 9. Is there anything else I can help with?"
    )
    assert tools == ["take_message"]
    saved = await messages_of({"data_dir": shared_data_dir}, call_sid)
    assert [(m.name, m.callback_number, m.message, m.department) for m in saved] == [
        ("Ana Ruiz", "+12128675309", "about a double charge", "sales")
    ]


async def test_only_what_is_missing_is_asked_for_and_a_number_may_be_spoken_in_words(
    make_settings, shared_data_dir
) -> None:
    async with call(make_settings) as phone:
        lines = [
            await say(phone, "this is Grace Hopper, can someone call me back about my router?"),
            await say(phone, "four one five, five five five, oh one double two"),
        ]
        call_sid = phone.caller.call_sid
    assert lines[0] == (
        "Of course, I can take a message. Thank you, Grace Hopper. What number should the team call you back on?"
    )
    assert "4 1 5, 5 5 5, 0 1 2 2" in lines[1] and "passed your message on" in lines[1]
    saved = await messages_of({"data_dir": shared_data_dir}, call_sid)
    assert [(m.name, m.callback_number, m.message) for m in saved] == [
        ("Grace Hopper", "+14155550122", "about my router")
    ]


async def test_thanks_bye_while_a_message_is_taken_is_a_goodbye_not_a_name(make_settings, shared_data_dir) -> None:
    async with call(make_settings) as phone:
        asked = await say(phone, "I'd like to leave a message")
        goodbye = await say(phone, "thanks, bye")
        call_sid = phone.caller.call_sid
    assert asked.endswith("What's your name?")
    assert "thanks, bye" not in goodbye.lower() and goodbye.endswith("Goodbye.")
    assert phone.record.ended_by == "agent"
    assert await messages_of({"data_dir": shared_data_dir}, call_sid) == []


async def test_a_message_that_cannot_be_saved_is_owned_up_to_and_a_person_offered(make_settings) -> None:
    with postgres_server() as store:
        # Calls not recorded: nothing else waits for the store at the end.
        async with call(make_settings, database_url=store.create_database("messages"), record_calls=False) as phone:
            assert phone.board.server is not None
            await phone.board.server.app.extensions["switchboard"].records.ready.wait()
            await say(phone, "I'd like to leave a message")
            await say(phone, "my name is Ada Lovelace")
            await say(phone, "415 555 0199")
            await asyncio.to_thread(store.stop)  # the records store goes away
            sorry = await say(phone, "please call me about moving my service")
            tools = phone.record.turns[-1].tools
            transfer = await say(phone, "yes please")
    assert sorry == "I'm sorry, I couldn't save your message. Would you like me to put you through to someone instead?"
    assert tools == ["take_message (failed)"]
    assert transfer == "Of course. I'll put you through to sales now."
    assert phone.record.transfer == {"department": "sales", "number": TARGETS["sales"], "said": ""}


async def test_this_number_means_the_number_calling(make_settings, shared_data_dir) -> None:
    async with call(make_settings) as phone:
        await say(phone, "can someone call me back?")
        await say(phone, "Grace")
        line = await say(phone, "this number is fine")
        await say(phone, "it's about my router")
        call_sid, caller = phone.caller.call_sid, phone.caller.caller
    assert line.startswith("I have 2 0 2, 5 5 5, 0 1 0 0.")
    saved = await messages_of({"data_dir": shared_data_dir}, call_sid)
    assert [(m.name, m.callback_number) for m in saved] == [("Grace", caller)]


async def test_goodbye_ends_the_call_after_the_agent_says_it(make_settings) -> None:
    async with call(make_settings) as phone:
        line = await say(phone, "that's all, thanks, bye")
        hung_up = phone.after_stream
    assert line == "Thank you for calling Kestrel Broadband. Goodbye."
    assert phone.record.turns[-1].tools == ["end_call"] and phone.record.ended_by == "agent"
    assert hung_up is not None and hung_up.verbs == ["Hangup"]  # what Twilio got from the Connect action


async def test_the_keypad_0_transfers_to_the_first_department(make_settings) -> None:
    async with call(make_settings) as phone:
        tools = await phone.press("0")
    assert tools == ["transfer_call"]
    assert phone.record.transfer == {
        "department": "sales",
        "number": TARGETS["sales"],
        "said": "Connecting you to sales now.",
    }


async def test_with_no_departments_the_agent_says_so_and_the_call_goes_on(make_settings) -> None:
    async with call(make_settings, transfer_targets={}) as phone:
        line = await say(phone, "can I talk to a real person?")
        answer = await say(phone, "how much is the autopay discount?")
    assert line.startswith("I'm sorry, I can't put you through right now")
    assert phone.record.transfer is None and "$5" in answer
