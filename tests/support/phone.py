"""A phone call for tests: real Hypercorn on 127.0.0.1, the Twilio caller and REST API, the ElevenLabs
conversation and Speech Engine stand-ins, and the OpenAI-compatible fake streaming tool calls.

ElevenLabs' part is played by the test: the Speech Engine client carries the brain's text, and the
conversation stand-in sends the audio that text would become, which the caller plays in real time
and acknowledges with Twilio's marks. The fixtures `twilio_api` and `call_settings` are in conftest.
"""

from __future__ import annotations

import asyncio
import base64
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from app.calls.control import CallControl
from app.calls.registry import ActionTimings
from app.records.store import open_for_reading
from app.settings import Settings
from app.speech_engine_contract import CALL_SID_HEADER
from app.telephony.state import BridgeLimits
from app.testing.fake_elevenlabs import FakeConversation, FakeElevenLabs
from app.testing.fake_openai import FakeOpenAI
from app.testing.fake_twilio_api import FakeTwilioApi
from app.testing.live_server import LiveServer
from app.testing.speech_engine import SpeechEngineClient
from app.testing.twilio_caller import TwilioCaller, ulaw_frames
from tests.support.config import API_KEY, PUBLIC_URL, SECRET, TWILIO_TOKEN

FAST_BRIDGE = BridgeLimits(start_timeout=2, ready_timeout=2, send_timeout=1, close_timeout=1)
FAST_ACTIONS = ActionTimings(
    turn_timeout=5, line_start_timeout=5, settle=0.05, heard_timeout=5, audio_poll=0.01, close_timeout=5
)


class CallUpdates(list):
    """The fake REST API's record of call updates, noting what the caller had heard at each one."""

    def __init__(self, caller: TwilioCaller) -> None:
        super().__init__()
        self.caller = caller
        self.heard: list[tuple[list[str], list[str], int]] = []  # (audio marks sent, marks echoed, media played)
        self.changed = asyncio.Event()

    def append(self, item: Any) -> None:
        caller = self.caller
        marks = [name for kind, name in caller.received if kind == "mark" and not name.startswith("flush-")]
        self.heard.append((marks, list(caller.echoed), len(caller.media)))
        super().append(item)
        self.changed.set()

    async def wait(self, count: int = 1, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self) < count:
                self.changed.clear()
                await self.changed.wait()


async def speak(conv: FakeConversation, seconds: float = 0.3, event_id: int = 1) -> list[str]:
    """What ElevenLabs' TTS does with the agent's text: audio down the conversation socket."""
    payloads = [base64.b64encode(frame).decode() for frame in ulaw_frames(seconds, frequency=330)]
    for payload in payloads:
        await conv.audio(payload, event_id)
    return payloads


@dataclass
class Phone:
    server: LiveServer
    caller: TwilioCaller
    conv: FakeConversation
    client: SpeechEngineClient
    api: FakeTwilioApi
    observed: Observed

    @property
    def svc(self) -> Any:
        return self.server.app.extensions["switchboard"]

    async def speak(self, seconds: float = 0.3, event_id: int = 1) -> list[str]:
        return await speak(self.conv, seconds, event_id)

    def counted(self, name: str, **labels: str) -> float:
        return self.svc.metrics.registry.get_sample_value(name, labels) or 0.0

    async def pressed(self, digit: str, count: int = 1) -> None:
        """The caller presses a key, and the app has been told (`count`: keys pressed so far)."""
        await self.caller.dtmf(digit)
        await self.observed.wait(lambda seen: len(seen.digits) >= count)

    async def hung_up(self) -> None:
        """The caller hangs up, and the app has been told the call ended."""
        await self.caller.hang_up()
        await self.ended()

    async def ended(self) -> None:
        """The app has been told the call's stream ended (a hang-up, or Twilio leaving it for a transfer)."""
        await self.observed.wait(lambda seen: self.caller.call_sid in seen.ended)


@asynccontextmanager
async def phone_call(
    serve: Any,
    settings: dict[str, Any],
    fake: FakeElevenLabs,
    api: FakeTwilioApi,
    *,
    header: bool = True,
    clock: Any = None,
) -> AsyncIterator[Phone]:
    """A call through the bridge, and the brain conversation ElevenLabs would open for it (`clock`:
    the time opening hours are read against)."""
    async with serve(clock=clock, **settings) as server:
        svc = server.app.extensions["switchboard"]
        svc.telephony.limits = FAST_BRIDGE
        svc.registry.timings = FAST_ACTIONS
        observed = Observed()
        svc.telephony.observers.append(observed)
        async with TwilioCaller(server.http_url, PUBLIC_URL, TWILIO_TOKEN, realtime=True, api=api) as caller:
            api.call_updates = CallUpdates(caller)
            await caller.dial()
            await caller.open_stream()
            await caller.connected()
            await caller.start()
            conv = await fake.conversation()
            assert await svc.registry.find(call_sid=caller.call_sid, timeout=5) is not None
            headers = {CALL_SID_HEADER: caller.call_sid} if header else {}
            async with await SpeechEngineClient.open(
                f"{server.ws_url}/ws", api_key=API_KEY, shared_secret=SECRET, headers=headers
            ) as client:
                await client.init(conv.conversation_id)
                yield Phone(server, caller, conv, client, api, observed)


async def messages_of(settings: dict[str, Any], call_sid: str) -> list[Any]:
    """The messages saved on this call, read from the records store as `python -m app messages` does:
    the server's DATABASE_URL when it has one, else the SQLite file in its DATA_DIR."""
    database = {"database_url": settings["database_url"]} if settings.get("database_url") else {}
    store = await open_for_reading(Settings(_env_file=None, data_dir=settings["data_dir"], **database))
    try:
        return [m for m in await store.messages.since() if m.call_sid == call_sid]
    finally:
        await store.stop()


def tool_names(request: Any) -> list[str]:
    return [spec["function"]["name"] for spec in request.body.get("tools", [])]


def tool_results(request: Any) -> list[dict[str, Any]]:
    return [json.loads(m["content"]) for m in request.messages if m["role"] == "tool"]


def dialled(form: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """The verbs, the dialled numbers and the dial actions of a redirect's TwiML."""
    root = ET.fromstring(form["Twiml"])
    dials = list(root.iter("Dial"))
    numbers = [(n.text or "").strip() for d in dials for n in d.iter("Number")]
    return [c.tag for c in root], numbers, [d.get("action", "") for d in dials]


async def requests_made(fake: FakeOpenAI, count: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while len(fake.requests) < count:
            fake.request_seen.clear()
            if len(fake.requests) >= count:
                break
            await fake.request_seen.wait()


class Observed:
    """A call observer registered after the app's own: once it has seen a key or a call's end, so have they."""

    def __init__(self) -> None:
        self.digits: list[str] = []
        self.ended: list[str] = []  # call SIDs
        self.changed = asyncio.Event()

    async def call_started(self, call: CallControl) -> None:
        pass

    async def call_ended(self, call: CallControl) -> None:
        self.ended.append(call.call_sid)
        self.changed.set()

    def dtmf(self, call: CallControl, digit: str) -> None:
        self.digits.append(digit)
        self.changed.set()

    async def wait(self, check: Callable[[Observed], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not check(self):
                self.changed.clear()
                await self.changed.wait()
