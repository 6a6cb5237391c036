"""The bridge end to end: real Hypercorn, the Twilio caller and the ElevenLabs stand-in on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest
from twilio.request_validator import RequestValidator
from websockets.exceptions import InvalidStatus

from app.calls.control import CallControl, EndReason
from app.telephony.state import BridgeLimits
from app.testing.fake_elevenlabs import FakeElevenLabs
from app.testing.live_server import LiveServer
from app.testing.twilio_caller import TwilioCaller, ulaw_frames
from tests.support.bridge import ended, metric, telephony
from tests.support.config import PUBLIC_URL, TWILIO_TOKEN

FAST = BridgeLimits(start_timeout=2, ready_timeout=2, send_timeout=1, close_timeout=1)


@asynccontextmanager
async def phone_server(serve: Any, settings: dict[str, Any], **limits: Any) -> AsyncIterator[LiveServer]:
    async with serve(**settings) as server:
        telephony(server).limits = replace(FAST, **limits)
        yield server


def caller_for(server: LiveServer, **kw: Any) -> TwilioCaller:
    return TwilioCaller(server.http_url, PUBLIC_URL, TWILIO_TOKEN, **kw)


def b64(frames: list[bytes]) -> list[str]:
    return [base64.b64encode(frame).decode() for frame in frames]


async def started_call(caller: TwilioCaller, fake: FakeElevenLabs, index: int = 0) -> Any:
    await caller.dial()
    await caller.open_stream()
    await caller.connected()
    await caller.start()
    conv = await fake.conversation(index)
    await conv.wait_for(lambda: conv.initiation is not None)
    return conv


class Recorder:
    """A call observer, as the call registry of the tools issue will be."""

    def __init__(self) -> None:
        self.started: list[CallControl] = []
        self.ended: list[CallControl] = []
        self.digits: list[str] = []
        self.changed = asyncio.Condition()

    async def wait_for(self, predicate: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def call_started(self, call: CallControl) -> None:
        self.started.append(call)
        await self._notify()

    async def call_ended(self, call: CallControl) -> None:
        self.ended.append(call)
        await self._notify()

    def dtmf(self, call: CallControl, digit: str) -> None:
        self.digits.append(digit)
        asyncio.get_running_loop().create_task(self._notify())


# --- relaying ---------------------------------------------------------------------------------


async def test_audio_is_relayed_bit_exact_both_ways(serve, phone_settings, fake_elevenlabs) -> None:
    async with phone_server(serve, phone_settings) as server, caller_for(server) as caller:
        conv = await started_call(caller, fake_elevenlabs)
        sent = await caller.send_audio(ulaw_frames(3.0))
        await conv.wait_for(lambda: len(conv.user_audio) == len(sent))
        agent = b64(ulaw_frames(2.0, frequency=220))
        for payload in agent:
            await conv.audio(payload, event_id=1)
        await caller.wait_for(lambda: len(caller.media) == len(agent) and caller.received[-1][0] == "mark")
        await caller.wait_for(lambda: caller.echoed == [name for kind, name in caller.received if kind == "mark"])
        await caller.hang_up()
        await conv.wait_for(lambda: conv.closed)
        outcome = await telephony(server).outcomes.get(caller.call_sid)
    assert len(sent) == 150 and conv.user_audio == sent
    assert caller.media == agent
    # The burst of agent audio is followed by a mark, which the caller echoed after playing it.
    assert caller.received[-1] == ("mark", caller.echoed[-1])
    assert conv.initiation["dynamic_variables"] == {"call_sid": caller.call_sid, "caller": caller.caller}
    assert outcome is EndReason.CALLER_HUNG_UP


async def test_media_before_start_and_before_elevenlabs_is_ready_is_held(
    serve, phone_settings, fake_elevenlabs
) -> None:
    fake_elevenlabs.metadata_gate = asyncio.Event()
    frames = b64(ulaw_frames(1.0))
    async with phone_server(serve, phone_settings) as server, caller_for(server) as caller:
        await caller.dial()
        await caller.open_stream()
        # No `connected`, and media before `start`, as protocols.md D1 warns can happen.
        for payload in frames[:10]:
            await caller.send_raw(caller.media_frame(payload))
        await caller.start()
        conv = await fake_elevenlabs.conversation()
        for payload in frames[10:30]:  # ElevenLabs has not sent its metadata yet
            await caller.send_raw(caller.media_frame(payload))
        fake_elevenlabs.metadata_gate.set()
        for payload in frames[30:]:
            await caller.send_raw(caller.media_frame(payload))
        await conv.wait_for(lambda: len(conv.user_audio) == len(frames))
        await caller.hang_up()
    assert conv.user_audio == frames


async def test_early_audio_beyond_the_bound_keeps_the_newest(serve, phone_settings, fake_elevenlabs) -> None:
    fake_elevenlabs.metadata_gate = asyncio.Event()
    frames = b64(ulaw_frames(1.0))
    recorder = Recorder()
    async with phone_server(serve, phone_settings, buffer_frames=20) as server, caller_for(server) as caller:
        telephony(server).observers.append(recorder)
        await caller.dial()
        await caller.open_stream()
        await caller.start()
        conv = await fake_elevenlabs.conversation()
        for payload in frames:
            await caller.send_raw(caller.media_frame(payload))
        await caller.dtmf("1")
        await recorder.wait_for(lambda: recorder.digits == ["1"])  # so every frame above was read early
        fake_elevenlabs.metadata_gate.set()
        await conv.wait_for(lambda: len(conv.user_audio) == 20)
        await caller.hang_up()
        await conv.wait_for(lambda: conv.closed)
        dropped = metric(server, "switchboard_dropped_frames_total", leg="twilio", reason="buffer_full")
    assert conv.user_audio == frames[-20:]
    assert dropped == len(frames) - 20


async def test_interruption_clears_twilio_and_drops_stale_audio(serve, phone_settings, fake_elevenlabs) -> None:
    first, stale, second = b64(ulaw_frames(0.2, 300)), b64(ulaw_frames(0.2, 500)), b64(ulaw_frames(0.2, 700))
    async with phone_server(serve, phone_settings) as server, caller_for(server) as caller:
        conv = await started_call(caller, fake_elevenlabs)
        for payload in first:
            await conv.audio(payload, event_id=3)
        await conv.interruption(3)
        for payload in stale:
            await conv.audio(payload, event_id=3)
        for payload in second:
            await conv.audio(payload, event_id=4)
        await caller.wait_for(lambda: len(caller.media) == len(first) + len(second))
        await caller.hang_up()
        await conv.wait_for(lambda: conv.closed)
        dropped = metric(server, "switchboard_dropped_frames_total", leg="elevenlabs", reason="interrupted")
    kinds = [kind for kind, _ in caller.received]
    clear_at = kinds.index("clear")
    assert [p for k, p in caller.received[:clear_at] if k == "media"] == first
    assert [p for k, p in caller.received[clear_at:] if k == "media"] == second
    assert dropped == len(stale)


async def test_pings_get_pongs_with_their_event_ids_including_zero(serve, phone_settings, fake_elevenlabs) -> None:
    async with phone_server(serve, phone_settings) as server, caller_for(server) as caller:
        conv = await started_call(caller, fake_elevenlabs)
        for event_id in (0, 1, 42):
            await conv.ping(event_id, ping_ms=None if event_id == 0 else 80)
        await conv.wait_for(lambda: len(conv.pongs) == 3)
        await caller.hang_up()
    assert conv.pongs == [0, 1, 42]


async def test_transcripts_and_responses_pass_without_reaching_twilio(serve, phone_settings, fake_elevenlabs) -> None:
    async with phone_server(serve, phone_settings) as server, caller_for(server) as caller:
        conv = await started_call(caller, fake_elevenlabs)
        await conv.user_transcript("hello", 1)
        await conv.agent_response("Hi, how can I help?", 1)
        await conv.send({"type": "vad_score", "vad_score_event": {"vad_score": 0.5}})
        await conv.audio(b64(ulaw_frames(0.02))[0], 1)
        await caller.wait_for(lambda: len(caller.media) == 1 and caller.received[-1][0] == "mark")
        await caller.hang_up()
    assert [kind for kind, _ in caller.received] == ["media", "mark"]


# --- teardown, both directions ------------------------------------------------------------------


async def test_twilio_stop_closes_elevenlabs(serve, phone_settings, fake_elevenlabs) -> None:
    async with phone_server(serve, phone_settings) as server, caller_for(server) as caller:
        conv = await started_call(caller, fake_elevenlabs)
        await caller.stop()
        await conv.wait_for(lambda: conv.closed)
        assert await ended(server, caller) is EndReason.CALLER_HUNG_UP
        assert conv.ws.close_code == 1000
        assert metric(server, "switchboard_calls_active") == 0


async def test_twilio_dropping_the_socket_closes_elevenlabs(serve, phone_settings, fake_elevenlabs) -> None:
    recorder = Recorder()
    async with phone_server(serve, phone_settings) as server, caller_for(server) as caller:
        telephony(server).observers.append(recorder)
        conv = await started_call(caller, fake_elevenlabs)
        await caller.aclose()  # no stop: the socket just goes away
        await conv.wait_for(lambda: conv.closed)
        await recorder.wait_for(lambda: recorder.ended)
        outcome = await telephony(server).outcomes.get(caller.call_sid)
        active = metric(server, "switchboard_calls_active")
    assert outcome is EndReason.TWILIO_DROPPED and outcome.failed
    assert active == 0


@pytest.mark.parametrize(
    ("code", "reason", "hangs_up"),
    [(1000, EndReason.AGENT_ENDED, True), (1011, EndReason.UPSTREAM_DROPPED, False)],
)
async def test_elevenlabs_closing_closes_twilio(serve, phone_settings, fake_elevenlabs, code, reason, hangs_up) -> None:
    settings = {**phone_settings, "fallback_number": "+15550001111"}
    async with phone_server(serve, settings) as server, caller_for(server) as caller:
        conv = await started_call(caller, fake_elevenlabs)
        await conv.close(code)
        assert await ended(server, caller) is reason
        action = await caller.connect_action()
    assert caller.close_code == 1000
    if hangs_up:
        assert action.verbs == ["Hangup"]
    else:
        assert action.verbs == ["Say", "Dial", "Hangup"] and action.dialled == ["+15550001111"]


async def test_an_elevenlabs_error_event_is_counted_and_audio_keeps_flowing_both_ways(
    serve, phone_settings, fake_elevenlabs
) -> None:
    async with phone_server(serve, phone_settings) as server, caller_for(server) as caller:
        conv = await started_call(caller, fake_elevenlabs)
        await conv.error("TTS hiccup", code=1011)  # on its own: no close follows
        sent = await caller.send_audio(ulaw_frames(0.4))
        await conv.wait_for(lambda: conv.user_audio == sent)
        agent = b64(ulaw_frames(0.4, frequency=220))
        for payload in agent:
            await conv.audio(payload, event_id=2)
        await caller.wait_for(lambda: caller.media == agent)
        async with httpx.AsyncClient() as http:
            exposed = (await http.get(f"{server.http_url}/metrics")).text
        await caller.hang_up()
        assert await ended(server, caller) is EndReason.CALLER_HUNG_UP
    assert "switchboard_elevenlabs_errors_total 1.0" in exposed


async def test_an_elevenlabs_error_before_a_close_ends_the_call_with_the_close(
    serve, phone_settings, fake_elevenlabs
) -> None:
    async with phone_server(serve, phone_settings) as server, caller_for(server) as caller:
        conv = await started_call(caller, fake_elevenlabs)
        await conv.fail("LLM failed", code=1002)
        assert await ended(server, caller) is EndReason.UPSTREAM_DROPPED
        errors = metric(server, "switchboard_elevenlabs_errors_total")
    assert errors == 1


async def test_max_call_length_ends_the_call_gracefully(serve, phone_settings, fake_elevenlabs) -> None:
    async with phone_server(serve, phone_settings, max_call_seconds=0.3) as server, caller_for(server) as caller:
        conv = await started_call(caller, fake_elevenlabs)
        assert await ended(server, caller) is EndReason.MAX_DURATION
        await conv.wait_for(lambda: conv.closed)
        action = await caller.connect_action()
    assert conv.ws.close_code == 1000
    assert action.verbs == ["Say", "Hangup"] and "time limit" in action.said[0]


# --- upstream failures and the Connect action ---------------------------------------------------


@pytest.mark.parametrize("fault", ["signed_url_500", "signed_url_401", "socket_refused", "stall"])
async def test_upstream_failure_gets_apology_and_fallback(serve, phone_settings, fake_elevenlabs, fault) -> None:
    if fault == "signed_url_500":
        fake_elevenlabs.refuse_signed_url = 500
    elif fault == "signed_url_401":
        fake_elevenlabs.api_key = "someone-else"
    elif fault == "socket_refused":
        fake_elevenlabs.refuse_socket = True
    else:
        fake_elevenlabs.stall = True
    settings = {**phone_settings, "fallback_number": "+15550001111"}
    async with phone_server(serve, settings, ready_timeout=0.5) as server, caller_for(server) as caller:
        await caller.dial()
        await caller.open_stream()
        await caller.connected()
        await caller.start()
        await caller.send_audio(ulaw_frames(0.2))
        reason = await ended(server, caller)
        action = await caller.connect_action()
    expected = EndReason.UPSTREAM_STALLED if fault == "stall" else EndReason.UPSTREAM_UNREACHABLE
    assert reason is expected and reason.failed
    assert action.verbs == ["Say", "Dial", "Hangup"]
    assert "Sorry" in action.said[0] and action.dialled == ["+15550001111"]


async def test_without_a_fallback_number_the_apology_ends_the_call(serve, phone_settings, fake_elevenlabs) -> None:
    fake_elevenlabs.refuse_signed_url = 503
    async with phone_server(serve, phone_settings) as server, caller_for(server) as caller:
        await caller.dial()
        await caller.open_stream()
        await caller.start()
        await ended(server, caller)
        action = await caller.connect_action()
    assert action.verbs == ["Say", "Hangup"] and "Sorry" in action.said[0]


async def test_wrong_audio_format_ends_the_call_with_one_clear_line(
    serve, phone_settings, fake_elevenlabs, caplog
) -> None:
    fake_elevenlabs.output_format = "pcm_16000"
    caplog.set_level(logging.ERROR, logger="switchboard.bridge")
    async with phone_server(serve, phone_settings) as server, caller_for(server) as caller:
        await caller.dial()
        await caller.open_stream()
        await caller.start()
        assert await ended(server, caller) is EndReason.FORMAT_MISMATCH
    lines = [r.getMessage() for r in caplog.records if "ulaw_8000" in r.getMessage()]
    assert len(lines) == 1
    assert "tts.agent_output_audio_format" in lines[0] and "pcm_16000" in lines[0] and "seng_test" in lines[0]


async def test_a_stalled_upstream_does_not_hold_other_calls(serve, phone_settings, fake_elevenlabs) -> None:
    fake_elevenlabs.stall = True
    async with (
        phone_server(serve, phone_settings, ready_timeout=30) as server,
        caller_for(server) as stalled,
        caller_for(server) as healthy,
    ):
        await stalled.dial()
        await stalled.open_stream()
        await stalled.start()
        await fake_elevenlabs.conversation(0)
        fake_elevenlabs.stall = False
        conv = await started_call(healthy, fake_elevenlabs, index=1)
        sent = await healthy.send_audio(ulaw_frames(1.0))
        await conv.wait_for(lambda: conv.user_audio == sent)
        await healthy.hang_up()
        await stalled.hang_up()
        assert await ended(server, stalled) is EndReason.CALLER_HUNG_UP


async def test_a_caller_that_stops_reading_is_cut_off_by_the_send_timeout(
    serve, phone_settings, fake_elevenlabs
) -> None:
    chunk = base64.b64encode(bytes(600_000)).decode()  # big agent audio fills the socket buffers fast
    async with phone_server(serve, phone_settings, send_timeout=0.5) as server, caller_for(server) as caller:
        conv = await started_call(caller, fake_elevenlabs)
        caller.ws.transport.pause_reading()
        for event_id in range(1, 60):
            if conv.closed:
                break
            try:
                await conv.audio(chunk, event_id)
            except Exception:
                break
        await conv.wait_for(lambda: conv.closed, timeout=10)
        caller.ws.transport.resume_reading()
        assert await ended(server, caller) is EndReason.TWILIO_STALLED


# --- refusing streams -----------------------------------------------------------------------


async def closed_unclaimed(server: LiveServer, fake: FakeElevenLabs) -> Any:
    """The one conversation, opened when the webhook arrived, once it has been closed with no stream
    having taken it (no caller audio, no agent audio relayed)."""
    conv = await fake.conversation()
    await conv.wait_for(lambda: conv.closed)
    assert len(fake.conversations) == 1 and conv.user_audio == []
    assert metric(server, "switchboard_early_conversations_total", outcome="unclaimed") == 1
    return conv


@pytest.mark.parametrize("signature", ["", "bm90IGEgc2lnbmF0dXJl", "wrong-token", "other-host"])
async def test_upgrade_without_a_valid_signature_is_refused(serve, phone_settings, fake_elevenlabs, signature) -> None:
    async with phone_server(serve, phone_settings, early_unclaimed=0.3) as server, caller_for(server) as caller:
        await caller.dial()
        if signature == "wrong-token":  # the right URL, signed with another account's auth token
            signature = RequestValidator("another-auth-token").compute_signature(caller.webhook.stream_url, {})
        elif signature == "other-host":  # the right token, but the URL of another server
            signature = caller.validator.compute_signature("wss://other.example/media-stream", {})
        with pytest.raises(InvalidStatus) as refused:
            await caller.open_stream(signature=signature, sign=bool(signature))
        rejected = metric(server, "switchboard_twilio_rejected_total", reason="stream_signature")
        await closed_unclaimed(server, fake_elevenlabs)
    assert refused.value.response.status_code == 403
    assert rejected == 1


@pytest.mark.parametrize(
    "signed",
    [
        "wss://switchboard.example/media-stream",
        "wss://switchboard.example:443/media-stream",
        "https://switchboard.example/media-stream",
        "https://switchboard.example:443/media-stream",
    ],
)
async def test_every_form_twilio_may_sign_the_stream_url_in_is_accepted(
    serve, phone_settings, fake_elevenlabs, signed
) -> None:
    async with phone_server(serve, phone_settings) as server, caller_for(server) as caller:
        hook = await caller.dial()
        assert hook.stream_url == "wss://switchboard.example/media-stream"  # the form the TwiML gives
        await caller.open_stream(signature=caller.validator.compute_signature(signed, {}))
        await caller.start()
        conv = await fake_elevenlabs.conversation()
        sent = await caller.send_audio(ulaw_frames(0.2))
        await conv.wait_for(lambda: conv.user_audio == sent)
        await caller.hang_up()
        assert await ended(server, caller) is EndReason.CALLER_HUNG_UP


@pytest.mark.parametrize("tamper", ["no_token", "garbage", "other_call", "other_caller"])
async def test_bad_call_token_closes_without_going_upstream(serve, phone_settings, fake_elevenlabs, tamper) -> None:
    async with phone_server(serve, phone_settings, early_unclaimed=0.3) as server, caller_for(server) as caller:
        hook = await caller.dial()
        params = dict(hook.parameters)
        call_sid = None
        if tamper == "no_token":
            del params["token"]
        elif tamper == "garbage":
            params["token"] = "v1.9999999999.forged"
        elif tamper == "other_call":
            call_sid = "CA" + "f" * 32
        else:
            params["caller"] = "+15559999999"
        await caller.open_stream()
        await caller.start(params, call_sid=call_sid)
        code = await caller.wait_closed()
        rejected = metric(server, "switchboard_twilio_rejected_total", reason="call_token")
        await closed_unclaimed(server, fake_elevenlabs)
    assert code == 1008 and rejected == 1
    assert caller.media == []


async def test_a_second_stream_for_a_live_call_is_refused(serve, phone_settings, fake_elevenlabs) -> None:
    async with phone_server(serve, phone_settings) as server, caller_for(server) as caller:
        await started_call(caller, fake_elevenlabs)
        replay = caller_for(server, call_sid=caller.call_sid)
        replay.webhook = caller.webhook
        async with replay:
            await replay.open_stream()
            await replay.start()
            assert await replay.wait_closed() == 1008
        await caller.hang_up()
    assert len(fake_elevenlabs.conversations) == 1


async def test_no_start_closes_the_stream(serve, phone_settings, fake_elevenlabs) -> None:
    limits = {"start_timeout": 0.2, "early_unclaimed": 0.3}
    async with phone_server(serve, phone_settings, **limits) as server, caller_for(server) as caller:
        await caller.dial()
        await caller.open_stream()
        await caller.connected()
        assert await caller.wait_closed() == 1008
        await closed_unclaimed(server, fake_elevenlabs)


# --- untrusted frames -------------------------------------------------------------------------


async def test_malformed_twilio_frames_are_dropped_and_the_call_goes_on(serve, phone_settings, fake_elevenlabs) -> None:
    frames = b64(ulaw_frames(0.4))
    garbage: list[str | bytes] = [
        "not json",
        b"\x00\x01binary",
        "[1, 2, 3]",
        json.dumps({"event": "media"}),
        json.dumps({"event": "media", "media": {"payload": 'abc"}, "x": "'}}),
        json.dumps({"event": "media", "media": {"payload": 12}}),
        json.dumps({"event": "mark", "mark": {}}),
        json.dumps({"event": "dtmf", "dtmf": {"digit": "55"}}),
        json.dumps({"event": "surprise"}),
        json.dumps({"event": "media", "media": {"payload": "A" * 100_000}}),
    ]
    async with phone_server(serve, phone_settings) as server, caller_for(server) as caller:
        conv = await started_call(caller, fake_elevenlabs)
        for payload, junk in zip(frames, garbage, strict=False):
            await caller.send_raw(caller.media_frame(payload))
            await caller.send_raw(junk)
        for payload in frames[len(garbage) :]:
            await caller.send_raw(caller.media_frame(payload))
        await conv.wait_for(lambda: len(conv.user_audio) == len(frames))
        await caller.hang_up()
        assert await ended(server, caller) is EndReason.CALLER_HUNG_UP
        dropped = metric(server, "switchboard_dropped_frames_total", leg="twilio", reason="malformed")
    assert conv.user_audio == frames
    assert dropped == len(garbage)


async def test_malformed_elevenlabs_frames_are_dropped_and_the_call_goes_on(
    serve, phone_settings, fake_elevenlabs
) -> None:
    good = b64(ulaw_frames(0.1))
    async with phone_server(serve, phone_settings) as server, caller_for(server) as caller:
        conv = await started_call(caller, fake_elevenlabs)
        for junk in [
            "{",
            "[]",
            json.dumps({"type": "audio", "audio_event": {"audio_base_64": "%%%", "event_id": 1}}),
            json.dumps({"type": "audio", "audio_event": {"audio_base_64": good[0]}}),
            json.dumps({"type": "ping", "ping_event": {}}),
            json.dumps({"no": "type"}),
        ]:
            await conv.send(junk)
        await conv.ws.send(b"\x00binary")
        for payload in good:
            await conv.audio(payload, 1)
        await caller.wait_for(lambda: caller.media == good)
        await caller.hang_up()
        assert await ended(server, caller) is EndReason.CALLER_HUNG_UP
        dropped = metric(server, "switchboard_dropped_frames_total", leg="elevenlabs", reason="malformed")
    assert dropped == 7


# --- the seams for tools: observers, marks, dtmf, a graceful end -----------------------------------


async def test_observers_see_the_call_and_its_digits(serve, phone_settings, fake_elevenlabs) -> None:
    recorder = Recorder()
    async with phone_server(serve, phone_settings) as server, caller_for(server) as caller:
        telephony(server).observers.append(recorder)
        conv = await started_call(caller, fake_elevenlabs)
        await caller.dtmf("0")
        await caller.dtmf("#")
        await recorder.wait_for(lambda: len(recorder.digits) == 2)
        await caller.hang_up()
        await ended(server, caller)
    (call,) = recorder.started
    assert call.call_sid == caller.call_sid and call.caller == caller.caller
    assert call.conversation_id == conv.conversation_id and call.stream_sid == caller.stream_sid
    assert recorder.digits == ["0", "#"]
    assert recorder.ended == [call] and call.end_reason is EndReason.CALLER_HUNG_UP


async def test_flush_and_wait_heard_follow_twilio_marks(serve, phone_settings, fake_elevenlabs) -> None:
    recorder = Recorder()
    async with phone_server(serve, phone_settings) as server, caller_for(server, realtime=True) as caller:
        telephony(server).observers.append(recorder)
        conv = await started_call(caller, fake_elevenlabs)
        await recorder.wait_for(lambda: recorder.started)
        call = recorder.started[0]
        goodbye = b64(ulaw_frames(0.3))
        for payload in goodbye:
            await conv.audio(payload, event_id=9)
        await caller.wait_for(lambda: len(caller.media) == len(goodbye))
        assert call.playing
        assert await call.wait_heard(settle=0.05, timeout=5)
        assert not call.playing
        assert caller.echoed and caller.received[-1] == ("mark", caller.echoed[-1])  # the burst's mark
        assert await call.flush(timeout=5)
        assert caller.echoed[-1].startswith("flush-")
        call.end()
        assert await ended(server, caller) is EndReason.REQUESTED
        assert not await call.flush()
        action = await caller.connect_action()
    assert action.verbs == ["Hangup"]
    assert conv.closed
