"""The call registry: binding in either order, per-call limits, and the work a call owns."""

from __future__ import annotations

import asyncio

from app.calls.control import CallControl, EndReason
from app.calls.registry import CALL_LIMITS, MESSAGE_TOOL, TRANSFER_TOOL, ActionTimings, InProcessCallRegistry, Line

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
    assert [live.claim(MESSAGE_TOOL) for _ in range(4)] == [True, True, True, False]
    assert live.claim(TRANSFER_TOOL) and not live.claim(TRANSFER_TOOL)
    assert not live.claim("dial_anything")
    assert live.used(MESSAGE_TOOL) == CALL_LIMITS[MESSAGE_TOOL] == 3
    # The same call found again (another conversation, another turn) has the same allowance left.
    again = await calls.find(conversation_id="conv_1")
    assert again is live and not again.claim(MESSAGE_TOOL)
    stream.control.finish(EndReason.CALLER_HUNG_UP)
    other = Stream(OTHER_SID)
    await calls.call_started(other.control)
    fresh = calls.lookup(call_sid=OTHER_SID)
    assert fresh is not None and fresh.claim(TRANSFER_TOOL)
    assert not live.claim(MESSAGE_TOOL)  # ended: nothing more


async def test_action_runs_only_after_the_line_is_spoken_and_heard() -> None:
    calls = registry()
    stream = Stream()
    await calls.call_started(stream.control)
    live = calls.lookup(call_sid=SID)
    assert live is not None
    events: list[str] = []
    acted = asyncio.Event()

    async def act() -> None:
        events.append("acted")
        acted.set()

    line = Line(live.audio_progress)
    live.after_line("test", line, act)
    await asyncio.sleep(0.05)
    assert events == []  # the turn's text is still streaming
    line.spoken.set()
    await asyncio.sleep(0.05)
    assert events == []  # no audio of the line yet
    mark = stream.play()
    await asyncio.sleep(0.05)
    assert events == []  # playing, not yet heard
    events.append("heard")
    stream.control.mark_echoed(mark)
    async with asyncio.timeout(5):
        await acted.wait()
    assert events == ["heard", "acted"]
    await calls.close()


async def test_a_line_without_audio_acts_after_a_bounded_wait() -> None:
    calls = InProcessCallRegistry(timings=ActionTimings(line_start_timeout=0.05, settle=0.01, audio_poll=0.005))
    stream = Stream()
    await calls.call_started(stream.control)
    live = calls.lookup(call_sid=SID)
    assert live is not None
    acted = asyncio.Event()

    async def act() -> None:
        acted.set()

    line = Line(live.audio_progress)
    line.spoken.set()
    live.after_line("test", line, act)
    async with asyncio.timeout(5):
        await acted.wait()
    await calls.close()


async def test_waiting_work_is_cancelled_when_the_call_ends() -> None:
    calls = registry()
    stream = Stream()
    await calls.call_started(stream.control)
    live = calls.lookup(call_sid=SID)
    assert live is not None
    ran: list[str] = []

    async def act() -> None:
        ran.append("acted")

    live.after_line("test", Line(live.audio_progress), act)
    stream.control.finish(EndReason.CALLER_HUNG_UP)
    await calls.call_ended(stream.control)
    live.after_line("late", None, act)  # the call is over: nothing is scheduled
    await calls.close()
    assert ran == []


async def test_an_action_under_way_outlives_the_call_it_ends() -> None:
    """A transfer makes Twilio stop the stream while its REST request is still in flight."""
    calls = registry()
    stream = Stream()
    await calls.call_started(stream.control)
    live = calls.lookup(call_sid=SID)
    assert live is not None
    started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def act() -> None:
        started.set()
        await release.wait()
        finished.set()

    live.after_line("transfer", None, act)
    async with asyncio.timeout(5):
        await started.wait()
    stream.control.finish(EndReason.CALLER_HUNG_UP)
    await calls.call_ended(stream.control)
    assert not finished.is_set()
    release.set()
    await calls.close()
    assert finished.is_set()
