"""The bridge's pure parts: the ElevenLabs codec, call tokens, admission slots, outcomes, CallControl."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from app.calls.admission import CallSlots
from app.calls.control import CallControl, EndReason
from app.calls.outcomes import StreamOutcomes
from app.telephony import call_token
from app.telephony import elevenlabs_frames as el

# --- the ElevenLabs codec ---------------------------------------------------------------------------


def test_parses_the_events_the_bridge_uses() -> None:
    meta = {
        "type": "conversation_initiation_metadata",
        "conversation_initiation_metadata_event": {
            "conversation_id": "conv_1",
            "agent_output_audio_format": "ulaw_8000",
            "user_input_audio_format": "pcm_16000",
        },
    }
    assert el.parse(json.dumps(meta)) == el.Metadata("conv_1", "pcm_16000", "ulaw_8000")
    audio = {"type": "audio", "audio_event": {"audio_base_64": "f/9/fw==", "event_id": 0}}
    assert el.parse(json.dumps(audio)) == el.Audio("f/9/fw==", 0)
    assert el.parse('{"type":"ping","ping_event":{"event_id":0,"ping_ms":null}}') == el.Ping(0)
    assert el.parse('{"type":"interruption","interruption_event":{"event_id":4}}') == el.Interruption(4)
    assert el.parse('{"type":"agent_response","agent_response_event":{"agent_response":"hi","event_id":2}}') == (
        el.AgentResponse(2)
    )
    error = el.parse('{"type":"error","error_event":{"code":1008,"message":"bad","error_type":"auth"}}')
    assert error == el.Error(1008, "auth", "bad")
    assert el.parse('{"type":"vad_score","vad_score_event":{"vad_score":0.5}}') == el.Other("vad_score")


@pytest.mark.parametrize(
    "raw",
    [
        b"{}",
        "{",
        "[]",
        '{"no":"type"}',
        '{"type":"audio","audio_event":{"audio_base_64":"f/9/fw=="}}',
        '{"type":"audio","audio_event":{"audio_base_64":"%%%%","event_id":1}}',
        '{"type":"audio","audio_event":{"audio_base_64":"f/9/fw==","event_id":true}}',
        '{"type":"audio","audio_event":{"audio_base_64":"f/9/fw==","event_id":-1}}',
        '{"type":"ping","ping_event":{}}',
        '{"type":"ping","ping_event":{"event_id":"3"}}',
        '{"type":"interruption"}',
        '{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":{}}',
    ],
)
def test_garbage_is_none(raw: object) -> None:
    assert el.parse(raw) is None


def test_builders() -> None:
    assert json.loads(el.user_audio("f/9/fw==")) == {"user_audio_chunk": "f/9/fw=="}
    assert json.loads(el.pong(0)) == {"type": "pong", "event_id": 0}
    init = json.loads(el.initiation({"call_sid": "CA1", "caller": "+1555"}))
    assert init == {
        "type": "conversation_initiation_client_data",
        "dynamic_variables": {"call_sid": "CA1", "caller": "+1555"},
    }


# --- call tokens ------------------------------------------------------------------------------------

KEY = call_token.derive_key("auth-token")


def test_token_verifies_for_its_call_until_it_expires() -> None:
    token = call_token.issue(KEY, "CA1", "+1555", now=1000)
    assert call_token.verify(KEY, token, "CA1", "+1555", now=1000 + call_token.TTL_S)
    assert not call_token.verify(KEY, token, "CA1", "+1555", now=1001 + call_token.TTL_S)
    assert not call_token.verify(KEY, token, "CA2", "+1555", now=1000)
    assert not call_token.verify(KEY, token, "CA1", "+1666", now=1000)
    assert not call_token.verify(call_token.derive_key("other"), token, "CA1", "+1555", now=1000)


@pytest.mark.parametrize("token", [None, 5, "", "v1", "v1.x.y", "v2.2000.abc", "v1.2000.", "v1." + "9" * 20 + ".a"])
def test_malformed_tokens_fail(token: object) -> None:
    assert not call_token.verify(KEY, token, "CA1", "+1555", now=1000)


def test_a_later_expiry_cannot_be_grafted_on() -> None:
    version, expires, mac = call_token.issue(KEY, "CA1", "", now=1000).split(".")
    assert not call_token.verify(KEY, f"{version}.{int(expires) + 3600}.{mac}", "CA1", "", now=2000)


# --- admission slots and outcomes ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_slots_reserve_claim_release_and_lapse() -> None:
    clock = Clock()
    slots = CallSlots(2, clock)
    assert await slots.reserve("CA1") and await slots.reserve("CA2") and await slots.reserve("CA1")
    assert not await slots.reserve("CA3")
    assert await slots.claim("CA1") and slots.live == 1
    assert not await slots.claim("CA1")  # a second stream for a live call
    clock.now += call_token.TTL_S + 1  # CA2 never streamed: its reservation lapses
    assert await slots.reserve("CA3")
    assert not await slots.reserve("CA4")
    await slots.release("CA1")
    assert await slots.reserve("CA4")


async def test_outcomes_expire_and_stay_bounded() -> None:
    clock = Clock()
    outcomes = StreamOutcomes(ttl_s=10, capacity=2, clock=clock)
    await outcomes.record("CA1", EndReason.AGENT_ENDED)
    await outcomes.record("CA2", EndReason.UPSTREAM_DROPPED)
    assert await outcomes.get("CA1") is EndReason.AGENT_ENDED
    await outcomes.record("CA3", EndReason.CALLER_HUNG_UP)
    assert await outcomes.get("CA1") is None  # evicted by capacity
    clock.now = 11
    assert await outcomes.get("CA2") is None and await outcomes.get("CA3") is None


def test_failed_reasons() -> None:
    normal = {
        EndReason.CALLER_HUNG_UP,
        EndReason.TRANSFERRED,
        EndReason.AGENT_ENDED,
        EndReason.REQUESTED,
        EndReason.MAX_DURATION,
        EndReason.DRAINED,  # a goodbye, not an apology
    }
    assert {reason for reason in EndReason if not reason.failed} == normal


# --- CallControl --------------------------------------------------------------------------------------


async def test_flush_resolves_on_its_echo_and_fails_when_the_call_ends() -> None:
    sent: list[str] = []

    async def send_mark(name: str) -> bool:
        sent.append(name)
        return True

    call = CallControl("CA1", "MZ1", "+1555", send_mark)
    flush = asyncio.create_task(call.flush(timeout=5))
    await asyncio.sleep(0)
    call.mark_echoed(sent[0])
    assert await flush
    pending = asyncio.create_task(call.flush(timeout=5))
    await asyncio.sleep(0)
    call.finish(EndReason.CALLER_HUNG_UP)
    assert not await pending
    assert not await call.flush()


async def test_audio_marks_track_what_was_heard() -> None:
    async def send_mark(name: str) -> bool:
        return True

    call = CallControl("CA1", "MZ1", "", send_mark)
    assert not call.playing
    call.audio_sent()
    assert call.playing and call.unmarked_audio
    first = call.audio_mark(7)
    call.audio_sent()
    second = call.audio_mark(7)
    assert (first, second) == ("7-1", "7-2") and not call.unmarked_audio
    call.mark_echoed(first)
    assert call.playing
    call.mark_echoed("junk")
    call.mark_echoed("7-99")  # never more heard than sent
    assert not call.playing
    call.audio_sent()
    assert call.playing
    call.cleared()
    assert not call.playing
    assert await call.wait_heard(settle=0, timeout=1)


async def test_a_line_joining_audio_not_yet_marked_counts_as_started() -> None:
    """A transfer waits for its line's first audio: that audio may join a burst that is still
    going out unmarked, and must count all the same (else the transfer waits out its timeout)."""

    async def send_mark(name: str) -> bool:
        return True

    call = CallControl("CA1", "MZ1", "", send_mark)
    call.audio_sent()  # the answer before the line starts playing, not marked yet
    since = call.audio_progress  # the turn with the transfer begins
    call.audio_sent()  # its line's first chunk, in the same burst
    assert call.audio_progress > since
    call.audio_mark(3)
    assert call.progress_at(0.0) == 0  # before any audio
    assert call.progress_at(time.time() + 60) == call.audio_progress  # nothing began after that


async def test_end_is_requested_once_with_its_reason() -> None:
    async def send_mark(name: str) -> bool:
        return True

    call = CallControl("CA1", "MZ1", "", send_mark)
    call.end(EndReason.REQUESTED)
    call.end(EndReason.MAX_DURATION)
    assert await call.end_requested() is EndReason.REQUESTED
