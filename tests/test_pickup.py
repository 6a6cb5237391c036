"""Picking up faster: the ElevenLabs conversation is opened when Twilio's webhook arrives, its greeting
waits for the media stream, and a conversation no stream takes is closed. Real Hypercorn, the Twilio
caller and the ElevenLabs stand-in on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest

from app.calls.control import EndReason
from app.telephony.state import BridgeLimits
from app.testing.fake_elevenlabs import FakeElevenLabs, speech_audio
from app.testing.live_server import LiveServer
from app.testing.twilio_caller import TwilioCaller, ulaw_frames
from tests.support.bridge import ended, metric, telephony
from tests.support.config import PUBLIC_URL, TWILIO_TOKEN

GREETING = "Thanks for calling Kestrel Broadband. How can I help?"


@pytest.fixture
def greeting_engine(fake_elevenlabs: FakeElevenLabs) -> FakeElevenLabs:
    """The stand-in's engine allows the greeting (as `make configure` sets it up)."""
    fake_elevenlabs.engine["overrides"] = {"first_message": True}
    return fake_elevenlabs


@asynccontextmanager
async def server(serve: Any, settings: dict[str, Any], **limits: Any) -> AsyncIterator[LiveServer]:
    """The bridge's own limits (nothing here tests a timeout: a loaded machine must not fail them)."""
    async with serve(**settings) as live:
        telephony(live).limits = replace(BridgeLimits(), **limits)
        yield live


def caller_for(live: LiveServer) -> TwilioCaller:
    return TwilioCaller(live.http_url, PUBLIC_URL, TWILIO_TOKEN)


async def stream(caller: TwilioCaller) -> None:
    await caller.open_stream()
    await caller.connected()
    await caller.start()


async def test_the_greeting_waits_for_the_stream_then_reaches_the_caller_in_order(
    serve, phone_settings, greeting_engine
) -> None:
    fake = greeting_engine
    async with server(serve, phone_settings) as live, caller_for(live) as caller:
        await caller.dial()
        conv = await fake.conversation()  # opened by the webhook: no stream yet
        greeting = speech_audio(GREETING)
        await conv.wait_for(lambda: len(conv.agent_audio) == len(greeting))
        assert conv.initiation["dynamic_variables"] == {"call_sid": caller.call_sid, "caller": caller.caller}
        assert caller.ws is None and len(telephony(live).early) == 1
        await stream(caller)
        await caller.wait_for(lambda: len(caller.media) == len(greeting))
        sent = await caller.send_audio(ulaw_frames(0.2))
        await conv.wait_for(lambda: conv.user_audio == sent)
        claimed = metric(live, "switchboard_early_conversations_total", outcome="claimed")
        await caller.hang_up()
        assert await ended(live, caller) is EndReason.CALLER_HUNG_UP
    assert caller.media == conv.agent_audio == greeting  # all of it, in order, untouched
    assert len(fake.conversations) == 1 and fake.signed_url_requests == 1 and claimed == 1


async def test_a_stream_that_starts_while_the_conversation_is_still_opening_waits_for_it(
    serve, phone_settings, greeting_engine
) -> None:
    fake = greeting_engine
    fake.metadata_gate = asyncio.Event()
    async with server(serve, phone_settings) as live, caller_for(live) as caller:
        await caller.dial()
        conv = await fake.conversation()
        await stream(caller)
        early = await caller.send_audio(ulaw_frames(0.2))  # held until the conversation is ready
        assert conv.user_audio == [] and caller.media == []
        fake.metadata_gate.set()
        greeting = speech_audio(GREETING)
        await caller.wait_for(lambda: len(caller.media) == len(greeting))
        await conv.wait_for(lambda: conv.user_audio == early)
        await caller.hang_up()
        await conv.wait_for(lambda: conv.closed)
    assert caller.media == greeting and len(fake.conversations) == 1


async def test_an_unclaimed_early_conversation_is_closed_and_freed(serve, phone_settings, fake_elevenlabs) -> None:
    async with server(serve, phone_settings, early_unclaimed=0.3) as live, caller_for(live) as caller:
        hook = await caller.dial()  # the caller hangs up before Twilio opens the stream
        assert hook.stream_url is not None
        conv = await fake_elevenlabs.conversation()
        await conv.wait_for(lambda: conv.closed)
        unclaimed = metric(live, "switchboard_early_conversations_total", outcome="unclaimed")
        waiting = len(telephony(live).early)
    assert conv.ws.close_code == 1000 and unclaimed == 1 and waiting == 0


async def test_a_stopping_server_closes_what_it_opened_early(serve, phone_settings, fake_elevenlabs) -> None:
    async with server(serve, phone_settings, early_unclaimed=60) as live, caller_for(live) as caller:
        await caller.dial()
        conv = await fake_elevenlabs.conversation()
        assert not conv.closed
    await conv.wait_for(lambda: conv.closed)  # and no task is left behind (see conftest)
    assert metric(live, "switchboard_early_conversations_total", outcome="unclaimed") == 0


async def test_a_stream_reaching_another_replica_opens_its_own_and_the_early_one_is_closed(
    serve, phone_settings, greeting_engine
) -> None:
    fake = greeting_engine
    async with (
        server(serve, phone_settings, early_unclaimed=0.5) as webhook_replica,
        server(serve, phone_settings) as stream_replica,
        caller_for(webhook_replica) as caller,
    ):
        await caller.dial()
        early = await fake.conversation(0)
        caller.server_url = stream_replica.http_url  # the load balancer sends the stream elsewhere
        await stream(caller)
        own = await fake.conversation(1)
        greeting = speech_audio(GREETING)
        await caller.wait_for(lambda: len(caller.media) == len(greeting))
        sent = await caller.send_audio(ulaw_frames(0.2))
        await own.wait_for(lambda: own.user_audio == sent)
        await early.wait_for(lambda: early.closed)
        unclaimed = metric(webhook_replica, "switchboard_early_conversations_total", outcome="unclaimed")
        claimed = metric(stream_replica, "switchboard_early_conversations_total", outcome="claimed")
        await caller.hang_up()
        assert await ended(stream_replica, caller) is EndReason.CALLER_HUNG_UP
    assert early.user_audio == [] and early.ws.close_code == 1000 and unclaimed == 1 and claimed == 0
    assert caller.media == own.agent_audio
