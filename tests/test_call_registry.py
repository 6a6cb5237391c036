"""The call registry: binding in either order, per-call limits, and the work a call owns."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from app.calls.control import CallControl, EndReason
from app.calls.registry import (
    CALL_LIMITS,
    END_TOOL,
    MESSAGE_TOOL,
    TRANSFER_TOOL,
    ActionTimings,
    CallAction,
    InProcessCallRegistry,
    Line,
)

FAST = ActionTimings(
    turn_timeout=5, line_start_timeout=5, settle=0.01, heard_timeout=5, audio_poll=0.005, close_timeout=5
)
SID = "CA" + "1" * 32
OTHER_SID = "CA" + "2" * 32


class Stream:
    """The bridge's side of a CallControl: agent audio out, marks out, Twilio's echoes in."""

    def __init__(self, call_sid: str = SID, conversation_id: str | None = "conv_1") -> None:
        self.marks: list[str] = []
        self.control = CallControl(call_sid, "MZ" + "0" * 32, "+14155550100", self._send_mark)
        self.control.conversation_id = conversation_id

    async def _send_mark(self, name: str) -> bool:
        self.marks.append(name)
        return True

    def play(self, event_id: int = 1) -> str:
        """Agent audio goes out and the bridge marks it; returns the mark Twilio will echo."""
        self.control.audio_sent()
        return self.control.audio_mark(event_id)


def registry() -> InProcessCallRegistry:
    return InProcessCallRegistry(timings=FAST)


async def test_brain_first_waits_for_the_bridge() -> None:
    calls = registry()
    stream = Stream()
    by_sid = asyncio.create_task(calls.find(call_sid=SID, timeout=5))
    by_conversation = asyncio.create_task(calls.find(conversation_id="conv_1", timeout=5))
    await asyncio.sleep(0)  # both lookups are now waiting
    assert not by_sid.done() and not by_conversation.done()
    await calls.call_started(stream.control)
    live = await by_sid
    assert live is not None and live is await by_conversation
    assert live.call_sid == SID and live.conversation_id == "conv_1" and live.caller == "+14155550100"
    assert calls._waiters == {}


async def test_bridge_first_is_found_at_once_and_unknown_keys_time_out() -> None:
    calls = registry()
    await calls.call_started(Stream().control)
    assert (await calls.find(call_sid=SID)) is calls.lookup(conversation_id="conv_1") is not None
    assert await calls.find(call_sid=OTHER_SID) is None
    assert await calls.find(conversation_id="conv_other", timeout=0.01) is None
    assert await calls.find() is None
    assert calls._waiters == {}


async def test_sid_is_preferred_over_the_conversation_id() -> None:
    calls = registry()
    first, second = Stream(SID, "conv_1"), Stream(OTHER_SID, "conv_2")
    await calls.call_started(first.control)
    await calls.call_started(second.control)
    live = await calls.find(call_sid=OTHER_SID, conversation_id="conv_1")
    assert live is not None and live.call_sid == OTHER_SID


async def test_call_end_forgets_both_keys() -> None:
    calls = registry()
    stream = Stream()
    await calls.call_started(stream.control)
    stream.control.finish(EndReason.CALLER_HUNG_UP)
    await calls.call_ended(stream.control)
    assert calls.lookup(call_sid=SID) is None and calls.lookup(conversation_id="conv_1") is None
    assert len(calls) == 0


async def test_limits_are_per_call_and_end_with_it() -> None:
    calls = registry()
    stream = Stream()
    await calls.call_started(stream.control)
    live = calls.lookup(call_sid=SID)
    assert live is not None
    assert [await live.claim(MESSAGE_TOOL) for _ in range(4)] == ["accepted"] * 3 + ["limit"]
    assert await live.claim(TRANSFER_TOOL) == "accepted" and await live.claim(TRANSFER_TOOL) == "limit"
    assert await live.claim(END_TOOL, conflicts=(TRANSFER_TOOL,)) == "conflict"
    assert await live.claim("dial_anything") == "limit"
    assert live.used(MESSAGE_TOOL) == CALL_LIMITS[MESSAGE_TOOL] == 3
    # The same call found again (another conversation, another turn) has the same allowance left.
    again = await calls.find(conversation_id="conv_1")
    assert again is live and await again.claim(MESSAGE_TOOL) == "limit"
    stream.control.finish(EndReason.CALLER_HUNG_UP)
    other = Stream(OTHER_SID)
    await calls.call_started(other.control)
    fresh = calls.lookup(call_sid=OTHER_SID)
    assert fresh is not None and await fresh.claim(TRANSFER_TOOL) == "accepted"
    assert await live.claim(TRANSFER_TOOL) == "limit"  # ended: nothing more


class Actions:
    """The registry's executor: records what it was asked to do, and can be held up."""

    def __init__(self) -> None:
        self.done: list[tuple[str, str]] = []
        self.started = asyncio.Event()
        self.acted = asyncio.Event()
        self.release: asyncio.Event | None = None

    async def __call__(self, call: Any, action: CallAction) -> None:
        self.started.set()
        if self.release is not None:
            await self.release.wait()
        self.done.append((call.call_sid, action.kind))
        self.acted.set()


async def test_action_runs_only_after_the_line_is_spoken_and_heard() -> None:
    calls = registry()
    calls.executor = actions = Actions()
    stream = Stream()
    await calls.call_started(stream.control)
    live = calls.lookup(call_sid=SID)
    assert live is not None
    line = live.line()
    live.after_line(CallAction("transfer", "sales"), line)
    await asyncio.sleep(0.05)
    assert actions.done == []  # the turn's text is still streaming
    line.spoken.set()
    await asyncio.sleep(0.05)
    assert actions.done == []  # no audio of the line yet
    mark = stream.play()
    await asyncio.sleep(0.05)
    assert actions.done == []  # playing, not yet heard
    stream.control.mark_echoed(mark)
    async with asyncio.timeout(5):
        await actions.acted.wait()
    assert actions.done == [(SID, "transfer")]
    await calls.close()


async def test_a_line_started_elsewhere_is_placed_by_its_wall_clock_time() -> None:
    """The brain on another replica only knows when its turn began; the stream's history says where
    the call's audio stood then. Audio already playing before the turn is not taken for its line, and
    the line's own audio counts even when it began before the action reached the stream."""
    calls = registry()
    calls.executor = actions = Actions()
    stream = Stream()
    await calls.call_started(stream.control)
    live = calls.lookup(call_sid=SID)
    assert live is not None
    # The action arrives before its line's audio has started.
    earlier = stream.play()  # the previous answer, still playing when the turn began
    await asyncio.sleep(0.01)
    line = Line(None, at=time.time())
    line.spoken.set()
    await asyncio.sleep(0.01)
    live.after_line(CallAction("end"), line)
    stream.control.mark_echoed(earlier)
    await asyncio.sleep(0.1)
    assert actions.done == []  # the earlier audio was heard, but this line has not started
    stream.control.mark_echoed(stream.play())
    async with asyncio.timeout(5):
        await actions.acted.wait()
    assert actions.done == [(SID, "end")]
    # The usual case across replicas: the line's audio began while its text was still going out, so
    # it is already playing when the action arrives.
    actions.acted.clear()
    earlier = stream.play()
    await asyncio.sleep(0.01)
    line = Line(None, at=time.time())
    await asyncio.sleep(0.01)
    mark = stream.play()  # this line's audio
    stream.control.mark_echoed(earlier)
    line.spoken.set()
    live.after_line(CallAction("transfer", "sales"), line)
    await asyncio.sleep(0.1)
    assert actions.done == [(SID, "end")]  # the earlier audio was heard, but this line is still playing
    stream.control.mark_echoed(mark)
    # Well within line_start_timeout: counting from the audio the stream had when the action arrived
    # would wait that long for audio of a line that had already begun.
    async with asyncio.timeout(FAST.line_start_timeout / 2):
        await actions.acted.wait()
    assert actions.done == [(SID, "end"), (SID, "transfer")]
    await calls.close()


async def test_a_line_without_audio_acts_after_a_bounded_wait() -> None:
    calls = InProcessCallRegistry(timings=ActionTimings(line_start_timeout=0.05, settle=0.01, audio_poll=0.005))
    calls.executor = actions = Actions()
    stream = Stream()
    await calls.call_started(stream.control)
    live = calls.lookup(call_sid=SID)
    assert live is not None
    line = live.line()
    line.spoken.set()
    live.after_line(CallAction("end"), line)
    async with asyncio.timeout(5):
        await actions.acted.wait()
    await calls.close()


async def test_waiting_work_is_cancelled_when_the_call_ends() -> None:
    calls = registry()
    calls.executor = actions = Actions()
    stream = Stream()
    await calls.call_started(stream.control)
    live = calls.lookup(call_sid=SID)
    assert live is not None
    live.after_line(CallAction("end"), live.line())
    stream.control.finish(EndReason.CALLER_HUNG_UP)
    await calls.call_ended(stream.control)
    live.after_line(CallAction("end"), None)  # the call is over: nothing is scheduled
    await calls.close()
    assert actions.done == []


async def test_an_action_under_way_outlives_the_call_it_ends() -> None:
    """A transfer makes Twilio stop the stream while its REST request is still in flight."""
    calls = registry()
    calls.executor = actions = Actions()
    actions.release = asyncio.Event()
    stream = Stream()
    await calls.call_started(stream.control)
    live = calls.lookup(call_sid=SID)
    assert live is not None
    live.after_line(CallAction("transfer", "sales"), None)
    async with asyncio.timeout(5):
        await actions.started.wait()
    stream.control.finish(EndReason.CALLER_HUNG_UP)
    await calls.call_ended(stream.control)
    assert actions.done == []
    actions.release.set()
    await calls.close()
    assert actions.done == [(SID, "transfer")]


def test_actions_travel_as_json_and_garbage_is_refused() -> None:
    action = CallAction("transfer", "sales", "Connecting you.")
    assert CallAction.from_json(action.to_json()) == action
    for garbage in ("", "{}", '{"kind": "dial", "department": "+1900"}', "[1]", '{"kind": null}'):
        assert CallAction.from_json(garbage) is None
