"""Call state shared through a real redis-server: two replicas in this process, each with its own
identity and connection, exactly as two server processes would have."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from app.brain.tools import CALL_LIMITS
from app.brain.tools.end_call import NAME as END_TOOL
from app.brain.tools.transfer_call import NAME as TRANSFER_TOOL
from app.calls.control import EndReason
from app.calls.registry import CallAction
from app.calls.shared import PREFIX, SharedCallRegistry, SharedOutcomes, SharedSlots, SharedState
from tests.support.calls import CALLER, FAST, OTHER_SID, SID, Actions, Stream, after_now
from tests.support.servers import RedisServer
from tests.support.waiting import until

LEASE_S = 3.0


pytestmark = pytest.mark.usefixtures("fresh_redis")  # each test starts with Redis up and empty


@asynccontextmanager
async def replica(
    redis: RedisServer, limit: int = 2
) -> AsyncIterator[tuple[SharedState, SharedSlots, SharedCallRegistry]]:
    state = SharedState(redis.url)
    await state.start()
    slots = SharedSlots(state, limit, LEASE_S)
    registry = SharedCallRegistry(state, slots, lease_s=LEASE_S, max_call_seconds=60, limits=CALL_LIMITS, timings=FAST)
    await registry.start()
    try:
        yield state, slots, registry
    finally:
        await registry.close()
        await state.close()


async def test_admission_counts_every_replicas_calls_and_a_dead_replicas_slots_lapse(redis) -> None:
    async with replica(redis) as (_, a, _ra), replica(redis) as (_, b, _rb):
        assert await a.reserve(SID) and await a.claim(SID)
        assert await b.reserve(OTHER_SID) and await b.claim(OTHER_SID)
        third = "CA" + "3" * 32
        assert not await a.reserve(third) and not await b.reserve(third)  # two calls, on two replicas
        assert not await b.claim(SID)  # a second stream for a live call, wherever it arrives
        await b.release(OTHER_SID)
        assert await a.reserve(third)
        await a.release(third)
        # Replica `a` dies: nothing renews its call's lease, so its slot lapses within the lease.
        a.held.clear()
        fourth = "CA" + "4" * 32

        async def admitted() -> bool:
            return await b.reserve(fourth)

        await until(admitted, timeout=LEASE_S * 3, what="the dead replica's slot lapsed", every=0.1)


async def test_a_tool_is_claimed_once_however_many_replicas_ask_at_once(redis) -> None:
    async with replica(redis) as (_, _, ra), replica(redis) as (_, _, rb):
        stream = Stream()
        await rb.call_started(stream.control)
        remote = await ra.find(call_sid=SID)
        local = rb.lookup(call_sid=SID)
        assert remote is not None and local is not None and remote is not local
        results = await asyncio.gather(*(c.claim(TRANSFER_TOOL, (END_TOOL,)) for c in [remote, local] * 10))
        assert results.count("accepted") == 1 and set(results) == {"accepted", "limit"}
        assert await local.claim(END_TOOL, (TRANSFER_TOOL,)) == "conflict"


async def sent_to(holder: SharedCallRegistry) -> list[str]:
    """The calls whose actions were handed to `holder`, in the order they were sent."""
    entries = await holder.state.redis.xrange(f"{PREFIX}inbox:{holder.state.replica}")
    return [fields["call_sid"] for _, fields in entries if "call_sid" in fields]


async def test_the_brain_on_one_replica_acts_on_a_call_held_by_another_once_the_line_is_heard(redis) -> None:
    """Only the turn's start time travels to the holder; by the time the action arrives there, the
    line's audio has usually begun (speech follows the text while it is still streaming), and the
    holder must place the line by that time, not take the audio it has on arrival as the baseline.

    What proves ours is still waiting: a second call on the same holder, whose line has been heard,
    acted on after ours. Its action travels the same way behind ours and waits for the line to settle;
    ours, had it skipped a wait, would have been sent, and carried out, before it."""
    async with replica(redis) as (_, _, brain), replica(redis) as (_, _, holder):
        holder.executor = actions = Actions()
        stream, other = Stream(), Stream(OTHER_SID, "conv_2")
        await holder.call_started(stream.control)
        await holder.call_started(other.control)
        twin = await brain.find(call_sid=OTHER_SID)
        assert twin is not None

        async def twin_acted() -> None:
            before = len(actions.done)
            line = twin.line()
            after_now()
            other.control.mark_echoed(other.play())
            line.spoken.set()
            twin.after_line(CallAction("end"), line)
            await actions.wait(before + 1)

        earlier = stream.play()  # the agent's previous answer is still playing when the turn begins
        call = await brain.find(conversation_id="conv_1", timeout=2)
        assert call is not None and call.call_sid == SID and call.caller == CALLER
        line = call.line()
        after_now()
        assert await call.claim(TRANSFER_TOOL, (END_TOOL,)) == "accepted"
        call.after_line(CallAction("transfer", "sales"), line)
        mark = stream.play()  # this line's audio begins while its text is still going out
        stream.control.mark_echoed(earlier)
        await twin_acted()
        assert await sent_to(holder) == [OTHER_SID]  # the turn's text is still going out: nothing sent
        line.spoken.set()  # only now does the action go to the holder, after the line's audio began

        async def handed_over() -> bool:
            return await sent_to(holder) == [OTHER_SID, SID]

        await until(handed_over, what="the action handed to the holder")
        await twin_acted()
        assert actions.done == [(OTHER_SID, "end")] * 2  # this line is playing, not yet heard
        stream.control.mark_echoed(mark)
        # Well within line_start_timeout: a holder counting from the audio it had when the action
        # arrived would wait that long for audio of a line that had already played.
        await actions.wait(3, timeout=FAST.line_start_timeout / 2)
        assert actions.done[2] == (SID, "transfer")


async def test_the_brain_may_ask_before_the_bridge_has_announced_the_call(redis) -> None:
    async with replica(redis) as (_, _, brain), replica(redis) as (_, _, holder):
        waiting = asyncio.create_task(brain.find(call_sid=SID, timeout=5))
        await until(lambda: brain._waiters, what="the brain's lookup waiting")  # Redis had no such call
        await holder.call_started(Stream().control)
        found = await waiting
        assert found is not None and found.conversation_id == "conv_1"
        assert await brain.find(call_sid=OTHER_SID, timeout=0.2) is None


async def test_a_stream_outcome_is_read_where_the_connect_action_lands(redis) -> None:
    async with replica(redis) as (a, _, _ra), replica(redis) as (b, _, _rb):
        await SharedOutcomes(a).record(SID, EndReason.DRAINED)
        assert await SharedOutcomes(b).get(SID) is EndReason.DRAINED
        assert await SharedOutcomes(b).get(OTHER_SID) is None


async def test_without_redis_claims_say_unavailable_and_everything_returns_with_it(redis) -> None:
    async with replica(redis) as (brain_state, _, brain), replica(redis) as (_, _, holder):
        stream = Stream()
        await holder.call_started(stream.control)
        call = await brain.find(call_sid=SID)
        assert call is not None
        redis.stop()
        assert await call.claim(TRANSFER_TOOL) == "unavailable"
        await brain_state.beat()
        assert not brain_state.available and "Redis unreachable" in (brain_state.error or "")
        assert await brain.find(call_sid=SID) is None  # cannot say: no call tools rather than a guess
        redis.start()  # empty: a restarted Redis has lost every key

        async def back() -> bool:
            await brain_state.beat()
            return brain_state.available and await brain.find(call_sid=SID) is not None

        await until(back, timeout=LEASE_S * 3, what="the call back in Redis", every=0.1)  # the holder renewed it
        again = await brain.find(call_sid=SID)
        assert again is not None and await again.claim(TRANSFER_TOOL) == "accepted"
