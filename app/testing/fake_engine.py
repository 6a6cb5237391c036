"""ElevenLabs' Speech Engine played whole: the conversation socket for the bridge, and the engine
that dials the brain (protocols.md B and C). `make call` and the end-to-end tests use it.

For each conversation the bridge opens on the conversation stand-in (`FakeElevenLabs`), it dials
the brain as the Speech Engine does: the engine's `ws_url`, a JWT minted from the API key, and the
engine's `request_headers`, a `{"variable_name": ...}` header filled from the call's dynamic
variables (so `x-call-sid` names the call). It greets the caller when the initiation data overrides
the first message and the engine allows it, sends the brain `user_transcript` with the whole
history (the greeting included), and turns the brain's text into μ-law audio for the bridge as it
streams, each turn's audio under the turn's event id.

The one thing simulated is speech recognition: a stand-in cannot understand audio. The simulated
caller sends real audio frames for each utterance and, beside them, tells the stand-in what they
say (`will_say`, the side channel that stands in for ASR); once that many frames of caller audio
have come through the bridge, the words are "recognised". What the engine hears and says is
reported per call on `events(call_sid)`, as the ElevenLabs dashboard would show it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Literal

from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.testing.fake_elevenlabs import FakeConversation, FakeElevenLabs, first_message, speech_audio
from app.testing.speech_engine import SpeechEngineClient
from app.testing.twilio_caller import FRAME_BYTES

TURN_TIMEOUT_S = 60.0  # the brain's answer, start to final


@dataclass(frozen=True)
class EngineEvent:
    """What the engine heard or said on one call: `started` the conversation is up (its text: the
    greeting spoken, if any), `heard` the caller's words (sent to the brain), `said` a piece of the
    agent's text (spoken as it arrives), `done` the agent's whole turn, `ended` it is over."""

    kind: Literal["started", "heard", "said", "done", "ended"]
    text: str = ""
    event_id: int = 0
    at: float = field(default_factory=time.perf_counter)


@dataclass
class _Utterance:
    text: str
    frames: int


class SpeechEngineStandIn:
    """Use `async with SpeechEngineStandIn(api_key) as engine:`; ELEVENLABS_BASE_URL is `engine.base_url`."""

    def __init__(self, api_key: str, engine_id: str = "seng_local") -> None:
        self.api_key = api_key
        self.elevenlabs = FakeElevenLabs(api_key, engine_id)
        self.elevenlabs.on_conversation = self._play
        self.elevenlabs.on_user_audio = self._audio
        self._utterances: defaultdict[str, deque[_Utterance]] = defaultdict(deque)
        self._recognised: defaultdict[str, asyncio.Queue[str]] = defaultdict(asyncio.Queue)
        self._events: defaultdict[str, asyncio.Queue[EngineEvent]] = defaultdict(asyncio.Queue)

    @property
    def base_url(self) -> str:
        return self.elevenlabs.base_url

    @property
    def engine_id(self) -> str:
        return self.elevenlabs.engine_id

    async def __aenter__(self) -> SpeechEngineStandIn:
        await self.elevenlabs.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.elevenlabs.__aexit__(*exc)

    def will_say(self, call_sid: str, text: str, frames: int) -> None:
        """The ASR side channel: the caller's next `frames` frames of audio on this call say `text`."""
        self._utterances[call_sid].append(_Utterance(text, frames))

    def events(self, call_sid: str) -> asyncio.Queue[EngineEvent]:
        return self._events[call_sid]

    # --- speech recognition, by side channel --------------------------------------------------

    def _audio(self, conv: FakeConversation, payload: str) -> None:
        call_sid = _variables(conv).get("call_sid", "")
        waiting = self._utterances.get(call_sid)
        if not waiting:
            return  # sound with no words in it
        waiting[0].frames -= max(1, len(base64.b64decode(payload)) // FRAME_BYTES)
        if waiting[0].frames <= 0:
            self._recognised[call_sid].put_nowait(waiting.popleft().text)

    # --- the engine ---------------------------------------------------------------------------

    async def _play(self, conv: FakeConversation) -> None:
        variables = _variables(conv)
        call_sid = variables.get("call_sid", "")
        events = self._events[call_sid]
        events.put_nowait(EngineEvent("started", first_message(conv.initiation) or ""))
        config = self.elevenlabs.engine.get("speech_engine") or {}
        brain: SpeechEngineClient | None = None
        try:
            brain = await SpeechEngineClient.open(
                config.get("ws_url", ""),
                api_key=self.api_key,
                headers=_headers(config.get("request_headers"), variables),
            )
            await brain.init(conv.conversation_id)
            brain.history = conv.history  # the greeting is the first line of the history
            recognised = self._recognised[call_sid]
            while True:
                text = await recognised.get()
                events.put_nowait(EngineEvent("heard", text))
                event_id = await brain.say(text)
                await conv.user_transcript(text, event_id)
                await self._answer(conv, brain, event_id, events)
        except (OSError, InvalidStatus, TimeoutError):  # the brain refused, went away or never answered
            with contextlib.suppress(ConnectionClosed):
                await conv.error("the brain did not answer", code=1011)
                await conv.close(1011)
        finally:
            events.put_nowait(EngineEvent("ended"))
            if brain is not None:
                with contextlib.suppress(Exception):
                    await brain.close_conversation()
                await brain.aclose()

    async def _answer(
        self, conv: FakeConversation, brain: SpeechEngineClient, event_id: int, events: asyncio.Queue[EngineEvent]
    ) -> None:
        """Speak the brain's answer as it streams, then record it in the history."""
        answer = brain.answers[event_id]
        spoken = 0
        while True:
            await brain.wait_for(
                lambda spoken=spoken: len(answer.chunks) > spoken or answer.finals or brain.closed, TURN_TIMEOUT_S
            )
            for chunk in answer.chunks[spoken:]:
                events.put_nowait(EngineEvent("said", chunk, event_id))
                for payload in speech_audio(chunk):
                    await conv.audio(payload, event_id)
            spoken = len(answer.chunks)
            if answer.finals:
                break
            if brain.closed:
                raise ConnectionError("the brain hung up")
        await brain.final(event_id)
        await conv.agent_response(answer.text, event_id)
        events.put_nowait(EngineEvent("done", answer.text, event_id))


def _variables(conv: FakeConversation) -> dict[str, str]:
    variables = (conv.initiation or {}).get("dynamic_variables")
    return {k: v for k, v in variables.items() if isinstance(v, str)} if isinstance(variables, dict) else {}


def _headers(configured: Any, variables: dict[str, str]) -> dict[str, str]:
    """The engine's request_headers as ElevenLabs sends them: plain values, and dynamic variables."""
    headers: dict[str, str] = {}
    for name, value in (configured or {}).items():
        if isinstance(value, str):
            headers[name] = value
        elif isinstance(value, dict) and value.get("variable_name") in variables:
            headers[name] = variables[value["variable_name"]]
    return headers
