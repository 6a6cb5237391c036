"""The call registry: binding in either order, per-call limits, and the work a call owns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest

from app.brain.tools import CALL_LIMITS
from app.brain.tools.end_call import NAME as END_TOOL
from app.brain.tools.take_message import NAME as MESSAGE_TOOL
from app.brain.tools.transfer_call import NAME as TRANSFER_TOOL
from app.calls.control import EndReason
from app.calls.registry import ActionTimings, CallAction, InProcessCallRegistry, Line
from tests.support.calls import CALLER, FAST, OTHER_SID, SID, Actions, Stream, after_now


def registry() -> InProcessCallRegistry:
    return InProcessCallRegistry(CALL_LIMITS, timings=FAST)


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
    assert live.call_sid == SID and live.conversation_id == "conv_1" and live.caller == CALLER
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


# A call that has passed every wait, in a registry that waits longer at every step: once its action
# has run, an action that skipped one of its waits would have run before it (asyncio fires timers in
# deadline order). Its run is the event that proves the other action is still waiting.
SLOWER = replace(FAST, settle=FAST.settle * 20, audio_poll=FAST.audio_poll * 4)


@asynccontextmanager
async def twin(actions: Actions) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """`await acted()`: a heard line's action, on a call in a slower registry, has run."""
    calls = InProcessCallRegistry(CALL_LIMITS, timings=SLOWER)
    calls.executor = actions
    stream = Stream(OTHER_SID, "conv_twin")
    await calls.call_started(stream.control)
    live = calls.lookup(call_sid=OTHER_SID)
    assert live is not None

    async def acted() -> None:
        before = actions.done.count((OTHER_SID, "end"))
        line = live.line()
        line.spoken.set()
        stream.control.mark_echoed(stream.play())
        live.after_line(CallAction("end"), line)
        async with asyncio.timeout(5):
            while actions.done.count((OTHER_SID, "end")) == before:
                actions.acted.clear()
                await actions.acted.wait()

    try:
        yield acted
    finally:
        await calls.close()


@pytest.mark.parametrize("waiting_for", ["text", "audio", "echo"])
async def test_an_action_waits_until_its_line_is_spoken_started_and_heard(waiting_for: str) -> None:
    """`text`: the turn's text is still going out; `audio`: the line's audio has not begun; `echo`:
    it is playing, its mark not yet echoed."""
    calls = registry()
    calls.executor = actions = Actions()
    stream = Stream()
    await calls.call_started(stream.control)
    live = calls.lookup(call_sid=SID)
    assert live is not None
    line = live.line()
    live.after_line(CallAction("transfer", "sales"), line)
    mark = None
    if waiting_for != "text":
        line.spoken.set()
    if waiting_for != "audio":
        mark = stream.play()
        if waiting_for != "echo":
            stream.control.mark_echoed(mark)
    async with twin(actions) as acted:
        await acted()
    assert actions.done == [(OTHER_SID, "end")]  # ours is still waiting
    line.spoken.set()
    stream.control.mark_echoed(mark or stream.play())
    await actions.wait(2)
    assert actions.done == [(OTHER_SID, "end"), (SID, "transfer")]
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
    line = Line(None, at=after_now())
    line.spoken.set()
    live.after_line(CallAction("end"), line)
    stream.control.mark_echoed(earlier)
    async with twin(actions) as acted:
        await acted()
    assert actions.done == [(OTHER_SID, "end")]  # the earlier audio was heard, but this line has not started
    stream.control.mark_echoed(stream.play())
    await actions.wait(2)
    assert actions.done[1] == (SID, "end")
    # The usual case across replicas: the line's audio began while its text was still going out, so
    # it is already playing when the action arrives.
    earlier = stream.play()
    line = Line(None, at=after_now())
    mark = stream.play()  # this line's audio
    stream.control.mark_echoed(earlier)
    line.spoken.set()
    live.after_line(CallAction("transfer", "sales"), line)
    async with twin(actions) as acted:
        await acted()
    assert actions.done[2:] == [(OTHER_SID, "end")]  # the earlier audio was heard, but this line is still playing
    stream.control.mark_echoed(mark)
    # Well within line_start_timeout: counting from the audio the stream had when the action arrived
    # would wait that long for audio of a line that had already begun.
    await actions.wait(4, timeout=FAST.line_start_timeout / 2)
    assert actions.done[3] == (SID, "transfer")
    await calls.close()


async def test_a_line_without_audio_acts_after_a_bounded_wait() -> None:
    calls = InProcessCallRegistry(CALL_LIMITS, ActionTimings(line_start_timeout=0.05, settle=0.01, audio_poll=0.005))
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
