"""Tools in process: schemas, what is offered when, the gate, streamed tool-call assembly, the keypad."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.brain.llm import MAX_TOOL_ARGUMENT_CHARS, MAX_TOOL_CALLS, ToolCall, _ToolCallParts
from app.brain.prompt import Prompt
from app.brain.tools import BY_NAME, TOOLS, CallTools, Toolbox
from app.calls.control import EndReason
from app.calls.registry import CallAction, InProcessCallRegistry
from app.departments.directory import Directory
from app.observability import Metrics
from app.records.store import RecordsStore
from app.settings import Settings
from app.telephony.call_actions import CallActions, after_dial_twiml
from app.telephony.transfers import LocalTransfers, Transfer, result_of, transfer_twiml, whisper_text, whisper_twiml
from app.testing.clock import SetClock
from tests.support.calls import CALLER, FAST, SID, Stream
from tests.support.config import PUBLIC_URL, TARGETS, UNLISTED

TRANSFER_TOOL, END_TOOL, MESSAGE_TOOL, GAP_TOOL, DO_NOT_CALL_TOOL = (tool.name for tool in TOOLS)
MONDAY_NOON = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)  # noon in New York

PHONE = {
    "twilio_account_sid": "AC" + "0" * 32,
    "twilio_auth_token": "token",
    "public_url": PUBLIC_URL,
    "transfer_targets": TARGETS,
}


class RecordingActions(CallActions):
    """Twilio REST actions that record instead of calling Twilio."""

    def __init__(self, settings: Settings, metrics: Metrics, directory: Directory) -> None:
        super().__init__(settings, metrics, directory, LocalTransfers())
        self.transfers_made: list[tuple[str, str, str | None]] = []
        self.done = asyncio.Event()

    async def transfer(self, call_sid: str, caller: str, action: CallAction) -> bool:
        assert action.department is not None
        self.transfers_made.append((call_sid, action.department, action.say))
        self.done.set()
        return True


def settings(tmp_path, **values: Any) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **{"departments_file": None, **values})


def directory(s: Settings, at: datetime = MONDAY_NOON) -> Directory:
    found = Directory(s, SetClock(at))
    found.load()
    return found


@pytest.fixture
async def toolbox() -> AsyncIterator[Callable[..., Awaitable[tuple[Toolbox, InProcessCallRegistry]]]]:
    """`await toolbox(tmp_path, **settings)`: a Toolbox with a real records store (SQLite, recording off)."""
    stores: list[RecordsStore] = []

    async def make(tmp_path: Path, *, store: bool = True, **values: Any) -> tuple[Toolbox, InProcessCallRegistry]:
        s = settings(tmp_path, record_calls=False, **values)
        metrics = Metrics()
        registry = InProcessCallRegistry(timings=FAST)
        records = None
        if store:
            records = RecordsStore(s, metrics)
            stores.append(records)
            await records.start()
            async with asyncio.timeout(30):
                await records.ready.wait()
        departments = directory(s)
        return Toolbox(s, metrics, registry, RecordingActions(s, metrics, departments), records, departments), registry

    yield make
    for records in stores:
        await records.stop()


def turn(n: int = 1) -> tuple[int, str]:
    """The caller's n-th turn in the call: its number and words (a turn sent again has both the same)."""
    return n, f"words of turn {n}"


async def on_call(box: Toolbox, registry: InProcessCallRegistry, stream: Stream | None = None) -> CallTools:
    stream = stream or Stream()
    await registry.call_started(stream.control)
    tools = box.conversation(stream.control.call_sid)
    await tools.begin_turn(turn())
    return tools


def call(name: str, arguments: Any, call_id: str = "call_1") -> ToolCall:
    return ToolCall(call_id, name, arguments if isinstance(arguments, str) else json.dumps(arguments))


def counted(box: Toolbox, tool: str, outcome: str) -> float:
    return (
        box.metrics.registry.get_sample_value("switchboard_tool_calls_total", {"tool": tool, "outcome": outcome}) or 0
    )


# --- schemas and what is offered ------------------------------------------------------------


async def test_schemas_forbid_extra_fields_and_list_only_configured_departments(tmp_path, toolbox) -> None:
    box, registry = await toolbox(tmp_path, **PHONE)
    tools = await on_call(box, registry)
    specs = {spec["function"]["name"]: spec["function"] for spec in box.specs(tools.offered)}
    assert list(specs) == [TRANSFER_TOOL, END_TOOL, MESSAGE_TOOL]
    transfer = specs[TRANSFER_TOOL]["parameters"]
    assert transfer["properties"]["department"]["enum"] == ["sales", "support"]
    assert transfer["required"] == ["department"]
    for spec in specs.values():
        assert spec["parameters"]["additionalProperties"] is False
        assert "title" not in spec["parameters"]
    assert set(specs[MESSAGE_TOOL]["parameters"]["required"]) == {"name", "message"}
    assert not any(number in json.dumps(specs) for number in TARGETS.values())  # numbers never go to the model
    assert box.specs(tools.offered) is box.specs(tools.offered)  # built once


@pytest.mark.parametrize(
    ("values", "bound", "store", "offered"),
    [
        pytest.param(PHONE, True, True, (TRANSFER_TOOL, END_TOOL, MESSAGE_TOOL), id="everything"),
        pytest.param(PHONE, False, True, (MESSAGE_TOOL,), id="no-call"),
        pytest.param({**PHONE, "twilio_account_sid": None}, True, True, (END_TOOL, MESSAGE_TOOL), id="no-account"),
        pytest.param({**PHONE, "twilio_auth_token": None}, True, True, (END_TOOL, MESSAGE_TOOL), id="no-token"),
        pytest.param({**PHONE, "transfer_targets": {}}, True, True, (END_TOOL, MESSAGE_TOOL), id="no-targets"),
        pytest.param({**PHONE, "public_url": None}, True, True, (END_TOOL, MESSAGE_TOOL), id="no-public-url"),
        pytest.param(PHONE, True, False, (TRANSFER_TOOL, END_TOOL), id="no-store"),
        pytest.param({}, False, False, (), id="nothing"),
    ],
)
async def test_tools_are_offered_only_when_their_prerequisites_hold(
    tmp_path, values, bound, store, offered, toolbox
) -> None:
    box, registry = await toolbox(tmp_path, store=store, **values)
    if bound:
        tools = await on_call(box, registry)
    else:
        tools = box.conversation(None)
        await tools.begin_turn(turn())
    assert tools.offered == offered
    system = Prompt(box.settings, box.directory).system_for(offered)
    for name, tool in BY_NAME.items():
        assert (tool.rule in system) == (name in offered)


async def test_a_call_over_or_transferred_offers_no_call_tools(tmp_path, toolbox) -> None:
    box, registry = await toolbox(tmp_path, **PHONE)
    stream = Stream()
    tools = await on_call(box, registry, stream)
    await tools.run([call(TRANSFER_TOOL, {"department": "sales"})])
    assert await tools.begin_turn(turn(2)) == (MESSAGE_TOOL,)
    stream.control.finish(EndReason.CALLER_HUNG_UP)
    await registry.call_ended(stream.control)
    assert await tools.begin_turn(turn(3)) == (MESSAGE_TOOL,)
    await registry.close()


async def test_the_call_sid_header_must_look_like_one(tmp_path, toolbox) -> None:
    box, _ = await toolbox(tmp_path, **PHONE)
    assert box.conversation(SID).call_sid == SID
    for junk in ("{{call_sid}}", "", "CA123", "XX" + "1" * 32, SID + "0"):
        assert box.conversation(junk).call_sid is None


async def test_without_the_header_the_conversation_id_binds(tmp_path, toolbox) -> None:
    box, registry = await toolbox(tmp_path, **PHONE)
    await registry.call_started(Stream(conversation_id="conv_9").control)
    tools = box.conversation(None)
    tools.conversation_id = "conv_9"
    assert TRANSFER_TOOL in await tools.begin_turn(turn())
    assert tools.call is not None and tools.call.call_sid == SID


# --- the gate ---------------------------------------------------------------------------------


async def test_a_valid_transfer_waits_for_the_line_then_dials_the_configured_department(tmp_path, toolbox) -> None:
    box, registry = await toolbox(tmp_path, **PHONE)
    stream = Stream()
    tools = await on_call(box, registry, stream)
    (result,) = await tools.run([call(TRANSFER_TOOL, {"department": "support"})])
    assert json.loads(result)["ok"] is True and tools.armed_line is not None
    tools.end_turn()
    mark = stream.play()
    assert box.actions.transfers_made == []  # type: ignore[attr-defined]
    stream.control.mark_echoed(mark)
    async with asyncio.timeout(5):
        await box.actions.done.wait()  # type: ignore[attr-defined]
    assert box.actions.transfers_made == [(SID, "support", None)]  # type: ignore[attr-defined]
    await registry.close()


@pytest.mark.parametrize(
    ("name", "arguments", "outcome", "says"),
    [
        pytest.param(TRANSFER_TOOL, {"department": UNLISTED}, "invalid_arguments", "department", id="number"),
        pytest.param(TRANSFER_TOOL, {"department": "billing"}, "invalid_arguments", "'sales' or 'support'", id="dept"),
        pytest.param(
            TRANSFER_TOOL, {"department": "sales", "number": UNLISTED}, "invalid_arguments", "number", id="extra"
        ),
        pytest.param(TRANSFER_TOOL, "{not json", "invalid_arguments", "invalid arguments", id="not-json"),
        pytest.param(TRANSFER_TOOL, "[]", "invalid_arguments", "invalid arguments", id="not-object"),
        pytest.param(END_TOOL, {"reason": "bye", "dial": UNLISTED}, "invalid_arguments", "dial", id="end-extra"),
        pytest.param(MESSAGE_TOOL, {"name": "A", "message": "m", "x": 1}, "invalid_arguments", "x", id="msg-extra"),
        pytest.param(
            MESSAGE_TOOL,
            {"name": "A", "message": "m", "callback_number": "555"},
            "invalid_number",
            "not a valid phone number",
            id="bad-number",
        ),
        pytest.param("dial_number", {"number": UNLISTED}, "unknown_tool", "no such tool", id="unknown"),
        pytest.param("functions.transfer_call", {"department": "sales"}, "unknown_tool", "no such tool", id="alias"),
    ],
)
async def test_rejected_calls_are_counted_and_explained(
    tmp_path, caplog, name, arguments, outcome, says, toolbox
) -> None:
    box, registry = await toolbox(tmp_path, **PHONE)
    tools = await on_call(box, registry)
    (result,) = await tools.run([call(name, arguments)])
    answer = json.loads(result)
    assert answer["ok"] is False and says in answer["error"]
    assert UNLISTED not in result and UNLISTED[1:] not in result
    assert tools.labels == [outcome]
    assert counted(box, name if name in (TRANSFER_TOOL, END_TOOL, MESSAGE_TOOL) else "unknown", outcome) == 1
    assert any("rejected" in r.getMessage() for r in caplog.records)
    assert UNLISTED[1:] not in caplog.text  # numbers are masked in logs
    await registry.close()
    assert box.actions.transfers_made == []  # type: ignore[attr-defined]


async def test_limits_one_transfer_one_end_three_messages(tmp_path, toolbox) -> None:
    box, registry = await toolbox(tmp_path, **PHONE)
    tools = await on_call(box, registry)
    message = {"name": "Dana", "callback_number": "(415) 555-0100", "message": "Call me back."}
    results = await tools.run([call(MESSAGE_TOOL, message, f"m{n}") for n in range(4)])
    assert [json.loads(r)["ok"] for r in results] == [True, True, True, False]
    assert tools.labels == ["accepted"] * 3 + ["limit"]
    assert len(await box.records.messages.since()) == 3  # type: ignore[union-attr]
    results = await tools.run(
        [
            call(TRANSFER_TOOL, {"department": "sales"}, "t1"),
            call(TRANSFER_TOOL, {"department": "support"}, "t2"),
            call(END_TOOL, {"reason": "done"}, "e1"),
        ]
    )
    assert tools.labels == ["accepted", "limit", "conflict"]
    await registry.close()


async def test_tools_not_offered_are_refused_even_if_called(tmp_path, toolbox) -> None:
    box, _ = await toolbox(tmp_path, **PHONE)
    tools = box.conversation(None)  # no call: transfer and end are not offered
    await tools.begin_turn(turn())
    await tools.run([call(TRANSFER_TOOL, {"department": "sales"}), call(END_TOOL, {"reason": "bye"})])
    assert tools.labels == ["not_offered", "not_offered"]
    assert box.actions.transfers_made == []  # type: ignore[attr-defined]


async def test_tools_act_only_on_their_own_call(tmp_path, toolbox) -> None:
    box, registry = await toolbox(tmp_path, **PHONE)
    mine, other = Stream(SID, "conv_1"), Stream("CA" + "9" * 32, "conv_2")
    await registry.call_started(other.control)
    tools = await on_call(box, registry, mine)
    await tools.run([call(TRANSFER_TOOL, {"department": "sales"})])
    tools.end_turn()
    mine.control.mark_echoed(mine.play())
    async with asyncio.timeout(5):
        await box.actions.done.wait()  # type: ignore[attr-defined]
    assert [sid for sid, _, _ in box.actions.transfers_made] == [SID]  # type: ignore[attr-defined]
    other_call = registry.lookup(call_sid=other.control.call_sid)
    assert other_call is not None and other_call.used(TRANSFER_TOOL) == 0
    await registry.close()


async def test_a_message_without_a_number_uses_the_callers(tmp_path, toolbox) -> None:
    box, registry = await toolbox(tmp_path, **PHONE)
    tools = await on_call(box, registry)
    long = "Please call me. " * 60
    (result,) = await tools.run([call(MESSAGE_TOOL, {"name": " Dana\x07 Smith ", "message": long})])
    assert "shortened to 500" in json.loads(result)["result"]
    (saved,) = await box.records.messages.since()  # type: ignore[union-attr]
    assert saved.callback_number == CALLER and saved.call_sid == SID and saved.name == "Dana Smith"
    assert len(saved.message) == 500
    await registry.close()


# --- a turn sent again ---------------------------------------------------------------------------

MESSAGE = {"name": "Dana", "callback_number": "(415) 555-0100", "message": "Call me back."}


async def test_a_turn_sent_again_gets_its_first_attempts_effects_and_a_new_turn_acts(tmp_path, toolbox) -> None:
    box, registry = await toolbox(tmp_path, **PHONE)
    stream = Stream()
    tools = await on_call(box, registry, stream)
    first = await tools.run([call(MESSAGE_TOOL, MESSAGE), call(TRANSFER_TOOL, {"department": "sales"})])
    assert tools.labels == ["accepted", "accepted"]
    tools.end_turn()  # the attempt is over (cancelled, or its answer came too late)
    # The engine gave up waiting and sent the same words again: the same tools are offered (the
    # transfer is used up on the call, but not for this turn), and asking again changes nothing.
    assert await tools.begin_turn(turn()) == (TRANSFER_TOOL, END_TOOL, MESSAGE_TOOL)
    assert tools.armed_line is None
    again = await tools.run([call(MESSAGE_TOOL, MESSAGE), call(TRANSFER_TOOL, {"department": "sales"})])
    assert tools.labels == ["repeated", "repeated"] and again == first
    assert tools.armed_line is not None  # the transfer is under way: said if the model says nothing
    assert len(await box.records.messages.since()) == 1  # type: ignore[union-attr]
    tools.end_turn()
    stream.control.mark_echoed(stream.play())
    async with asyncio.timeout(5):
        await box.actions.done.wait()  # type: ignore[attr-defined]
    # The next turn is a new request: it acts (and the call's limits still hold).
    await tools.begin_turn(turn(2))
    await tools.run([call(MESSAGE_TOOL, MESSAGE), call(TRANSFER_TOOL, {"department": "sales"})])
    assert tools.labels == ["accepted", "not_offered"]
    await registry.close()
    assert len(await box.records.messages.since()) == 2  # type: ignore[union-attr]
    assert box.actions.transfers_made == [(SID, "sales", None)]  # type: ignore[attr-defined]
    assert counted(box, MESSAGE_TOOL, "repeated") == 1 and counted(box, MESSAGE_TOOL, "accepted") == 2


async def test_a_refused_call_is_tried_again_and_a_second_call_of_a_tool_is_its_own(tmp_path, toolbox) -> None:
    box, registry = await toolbox(tmp_path, **PHONE)
    tools = await on_call(box, registry)
    bad = {**MESSAGE, "callback_number": "555"}
    await tools.run([call(MESSAGE_TOOL, bad), call(MESSAGE_TOOL, MESSAGE)])
    assert tools.labels == ["invalid_number", "accepted"]
    await tools.begin_turn(turn())
    await tools.run([call(MESSAGE_TOOL, MESSAGE), call(MESSAGE_TOOL, MESSAGE), call(MESSAGE_TOOL, MESSAGE)])
    assert tools.labels == ["accepted", "repeated", "accepted"]
    assert len(await box.records.messages.since()) == 3  # type: ignore[union-attr]
    await registry.close()


async def test_a_retry_while_the_first_attempt_is_still_saving_waits_for_it(tmp_path, toolbox) -> None:
    box, registry = await toolbox(tmp_path, **PHONE)
    tools = await on_call(box, registry)
    store = box.records.messages  # type: ignore[union-attr]
    saving, release = asyncio.Event(), asyncio.Event()
    add = store.add

    async def slow_add(**fields: Any) -> Any:  # a records store that takes its time
        saving.set()
        await release.wait()
        return await add(**fields)

    store.add = slow_add  # type: ignore[method-assign]
    first = asyncio.create_task(tools.run([call(MESSAGE_TOOL, MESSAGE)]))
    await saving.wait()
    first.cancel()  # the engine sent the turn again under a new event id, which cancels the attempt
    await asyncio.gather(first, return_exceptions=True)
    await tools.begin_turn(turn())
    retry = asyncio.create_task(tools.run([call(MESSAGE_TOOL, MESSAGE)]))
    release.set()
    (result,) = await retry
    assert tools.labels == ["repeated"] and json.loads(result)["ok"] is True
    assert len(await store.since()) == 1
    await tools.close()
    await registry.close()


# --- the keypad -------------------------------------------------------------------------------


async def test_keypad_zero_transfers_to_the_first_department_once(tmp_path, toolbox) -> None:
    box, registry = await toolbox(tmp_path, **{**PHONE, "transfer_targets": {"support": TARGETS["support"], **TARGETS}})
    stream = Stream()
    await registry.call_started(stream.control)
    box.dtmf(stream.control, "5")
    box.dtmf(stream.control, "0")
    async with asyncio.timeout(5):
        await box.actions.done.wait()  # type: ignore[attr-defined]
    box.dtmf(stream.control, "0")
    await registry.close()  # the keypad's claims run on tasks the registry owns: done once it closes
    assert box.actions.transfers_made == [(SID, "support", "Connecting you to support now.")]  # type: ignore[attr-defined]
    assert counted(box, TRANSFER_TOOL, "keypad") == 1 and counted(box, TRANSFER_TOOL, "keypad_refused") == 1


async def test_keypad_does_nothing_without_transfers(tmp_path, toolbox) -> None:
    box, registry = await toolbox(tmp_path, **{**PHONE, "transfer_targets": {}})
    stream = Stream()
    await registry.call_started(stream.control)
    box.dtmf(stream.control, "0")
    await registry.close()  # the keypad's claims run on tasks the registry owns: done once it closes
    assert registry.lookup(call_sid=SID).used(TRANSFER_TOOL) == 0  # type: ignore[union-attr]
    assert counted(box, TRANSFER_TOOL, "keypad") == counted(box, TRANSFER_TOOL, "keypad_refused") == 0
    assert box.actions.transfers_made == []  # type: ignore[attr-defined]


# --- TwiML ------------------------------------------------------------------------------------


SALES_FILE = """
[departments.sales]
number = "+12025550143"
handles = "new plans"
time_zone = "America/New_York"
hours = { mon = "09:00-17:00" }
"""


def test_a_screened_transfer_rings_with_a_whisper_and_an_action(tmp_path) -> None:
    (tmp_path / "departments.toml").write_text(SALES_FILE)
    s = settings(tmp_path, **{**PHONE, "transfer_targets": {}}, departments_file=tmp_path / "departments.toml")
    sales = directory(s).departments["sales"]
    root = ET.fromstring(str(transfer_twiml(s, sales, SID, "Connecting you now.")))
    assert [child.tag for child in root] == ["Say", "Dial"]
    dial = root.find("Dial")
    assert dial is not None and dial.get("timeout") == "25" and dial.get("answerOnBridge") == "true"
    assert dial.get("action") == f"{PUBLIC_URL}/dial-action?department=sales"
    (number,) = dial.iter("Number")
    assert number.text == "+12025550143" and number.get("machineDetection") == "Enable"
    assert number.get("url") == f"{PUBLIC_URL}/transfer/whisper?call={SID}&department=sales"


def test_an_unscreened_department_gets_a_plain_dial(tmp_path) -> None:
    s = settings(tmp_path, **PHONE, ring_seconds=7)
    root = ET.fromstring(str(transfer_twiml(s, directory(s).departments["support"], SID)))
    (number,) = root.iter("Number")
    assert number.text == TARGETS["support"] and number.get("url") is None
    assert root.find("Dial").get("timeout") == "7"  # type: ignore[union-attr]


def test_the_whisper_says_who_is_calling_and_why_and_waits_for_a_key(tmp_path) -> None:
    s = settings(tmp_path, **PHONE)
    told = Transfer(
        SID, "sales", CALLER, True, reason=whisper_text("my card 4111 1111 1111 1111 was charged twice", 200)
    )
    root = ET.fromstring(str(whisper_twiml(s, told, "human")))
    assert [child.tag for child in root] == ["Gather", "Hangup"]  # no key: declined
    gather = root.find("Gather")
    assert gather is not None and gather.get("numDigits") == "1"
    assert gather.get("action") == f"{PUBLIC_URL}/transfer/screen?call={SID}&department=sales"
    said = gather.findtext("Say", "")
    assert "a caller on 4 1 5, 5 5 5, 0 1 0 0" in said and "Press 1 to take the call" in said
    assert "[card number]" in said and "4111" not in said
    named = ET.fromstring(str(whisper_twiml(s, replace(told, name="Dana Smith"), "")))
    assert "from Dana Smith, calling from 4 1 5" in named.findtext("Gather/Say", "")
    machine = ET.fromstring(str(whisper_twiml(s, told, "machine_end_beep")))
    assert [child.tag for child in machine] == ["Hangup"]  # a voicemail hears nothing about the caller


@pytest.mark.parametrize(
    ("status", "screen", "choice", "result"),
    [
        ("completed", True, "accepted", "connected"),
        ("completed", True, "", "declined"),  # answered, then hung up or pressed nothing
        ("completed", True, "declined", "declined"),
        ("completed", True, "voicemail", "voicemail"),
        ("completed", False, "", "connected"),  # unscreened: answering is taking it
        ("answered", True, "accepted", "connected"),
        ("busy", True, "", "busy"),
        ("no-answer", True, "", "no_answer"),
        ("failed", True, "", "failed"),
        ("canceled", True, "", "canceled"),
        ("no-answer", True, "declined", "declined"),  # the screen said no: however Twilio reports it
        ("no-answer", True, "voicemail", "voicemail"),
        ("canceled", True, "accepted", "canceled"),
    ],
)
def test_the_result_of_a_dial(status, screen, choice, result) -> None:
    assert result_of(status, Transfer(SID, "sales", CALLER, screen, choice=choice)) == result


@pytest.mark.parametrize(
    ("status", "fallback", "verbs", "dialled"),
    [
        ("completed", "+15550001111", ["Hangup"], []),
        ("busy", "+15550001111", ["Say", "Dial", "Hangup"], ["+15550001111"]),
        ("no-answer", None, ["Say", "Hangup"], []),
    ],
)
def test_a_dial_with_no_transfer_of_ours_never_leaves_silence(tmp_path, status, fallback, verbs, dialled) -> None:
    root = ET.fromstring(str(after_dial_twiml(settings(tmp_path, **PHONE, fallback_number=fallback), status)))
    assert [child.tag for child in root] == verbs
    assert [(d.text or "").strip() for d in root.iter("Dial")] == dialled


# --- assembling streamed tool calls -------------------------------------------------------------


def delta(index: int | None, call_id: str | None = None, name: str | None = None, arguments: str | None = None):
    """A tool-call delta as the stream's JSON carries it (keys may be missing)."""
    function = {k: v for k, v in (("name", name), ("arguments", arguments)) if v is not None}
    return {k: v for k, v in (("index", index), ("id", call_id), ("function", function)) if v is not None}


def test_deltas_assemble_by_index_in_pieces() -> None:
    parts = _ToolCallParts()
    parts.add([delta(0, "call_a", "transfer_call", ""), delta(1, "call_b", "end_call", '{"re')])
    parts.add([delta(0, None, None, '{"depart'), delta(1, None, None, 'ason": "bye"}')])
    parts.add([delta(0, None, None, 'ment": "sales"}')])
    assert parts.calls("call") == [
        ToolCall("call_a", "transfer_call", '{"department": "sales"}'),
        ToolCall("call_b", "end_call", '{"reason": "bye"}'),
    ]


def test_deltas_without_index_or_id_still_assemble() -> None:
    parts = _ToolCallParts()
    parts.add([delta(None, "x1", "end_call", '{"reason":'), delta(None, None, None, ' "bye"}')])
    parts.add([delta(None, "x2", "take_message", "{}")])
    parts.add([delta(5, None, "end_call", "{}")])
    calls = parts.calls("r0")
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("x1", "end_call", '{"reason": "bye"}'),
        ("x2", "take_message", "{}"),
        ("r0_5", "end_call", "{}"),
    ]


def test_too_many_or_too_large_tool_calls_are_bounded() -> None:
    parts = _ToolCallParts()
    parts.add([delta(i, f"c{i}", "take_message", "{}") for i in range(MAX_TOOL_CALLS + 3)])
    parts.add([delta(0, None, None, "x" * (MAX_TOOL_ARGUMENT_CHARS + 10))])
    parts.add([delta(1, None, "n" * 200, None)])
    calls = parts.calls("call")
    assert len(calls) == MAX_TOOL_CALLS and parts.dropped == 3
    assert calls[0].arguments == "{}" and "longer than" in (calls[0].error or "")
    assert calls[1].name == "take_message" and calls[1].error is None  # the first name sticks


# --- the Twilio REST action -------------------------------------------------------------------


@pytest.mark.parametrize("token", ["token", "wrong-token"])
async def test_transfer_redirects_the_call_through_the_rest_api(tmp_path, token) -> None:
    from app.testing.fake_twilio_api import FakeTwilioApi

    async with FakeTwilioApi(PHONE["twilio_account_sid"], "token") as api:
        s = settings(tmp_path, **{**PHONE, "twilio_auth_token": token, "twilio_api_base_url": api.base_url})
        transfers = LocalTransfers()
        actions = CallActions(s, Metrics(), directory(s), transfers)
        await actions.start()
        try:
            done = await actions.transfer(SID, CALLER, CallAction("transfer", "sales", reason="a new plan"))
            unknown = await actions.transfer(SID, CALLER, CallAction("transfer", UNLISTED))
        finally:
            await actions.aclose()
    outcome = "redirected" if token == "token" else "failed"
    labels = {"action": "transfer", "outcome": outcome}
    assert actions.metrics.registry.get_sample_value("switchboard_call_actions_total", labels) == 1
    assert done is (token == "token") and unknown is False
    if done:
        ((sid, form),) = api.call_updates
        assert sid == SID and ET.fromstring(form["Twiml"]).findtext("Dial/Number") == TARGETS["sales"]
    else:
        assert api.call_updates == []
    # What the whisper and the dial action need is recorded before Twilio is asked (then refused or not).
    recorded = await transfers.get(SID)
    assert recorded is not None and (recorded.department, recorded.reason, recorded.caller) == (
        "sales",
        "a new plan",
        CALLER,
    )
