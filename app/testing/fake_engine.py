"""ElevenLabs' Speech Engine played whole: the conversation socket for the bridge, and the engine
that dials the brain (protocols.md B and C). `make call` and the end-to-end tests use it.

For each conversation the bridge opens on the conversation stand-in (`FakeElevenLabs`), it dials
the brain as the Speech Engine does: the engine's `ws_url`, a JWT minted from the API key, and the
engine's `request_headers`, a `{"variable_name": ...}` header filled from the call's dynamic
variables (so `x-call-sid` names the call). It greets the caller when the initiation data overrides
the first message and the engine allows it, sends the brain `user_transcript` with the whole
history (the greeting included), and turns the brain's text into μ-law audio for the bridge as it
streams, each turn's audio under the turn's event id (one count of event ids per conversation).

As the real engine does (protocols.md E1, E2):
- it waits the engine's `cascade_timeout_seconds` for the brain's first words; then it abandons the
  turn and sends it again, under a new event id (`retry_with_new_event_id`, the default; what still
  comes for the old one is dropped) or the same one, ATTEMPTS times in all;
- when the caller starts talking while the agent's answer streams, it stops speaking, sends the
  client `interruption` (then one piece of audio already on its way, which the client must drop),
  keeps what was said of the answer in the history, drops the rest of it, and sends the brain the
  caller's new words while the old answer is still streaming.

The one thing simulated is speech recognition: a stand-in cannot understand audio. The simulated
caller sends real audio frames for each utterance and, beside them, tells the stand-in what they
say (`will_say`, the side channel that stands in for ASR); the caller is heard talking from the
first of those frames, and once that many frames of caller audio have come through the bridge,
the words are "recognised". What the engine hears and says is reported per call on
`events(call_sid)`, as the ElevenLabs dashboard would show it.
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

TURN_TIMEOUT_S = 60.0  # the brain's answer, first words to final
ATTEMPTS = 3  # a turn the brain does not start answering in time is sent this many times in all
DEFAULT_CASCADE_TIMEOUT_S = 5.0  # an engine that was never configured
IN_FLIGHT = speech_audio("audio on its way")[0]  # synthesised before the caller spoke over it


@dataclass(frozen=True)
class EngineEvent:
    """What the engine heard or said on one call: `started` the conversation is up (its text: the
    greeting spoken, if any), `heard` the caller's words (sent to the brain), `said` a piece of the
    agent's text (spoken as it arrives), `retried` the brain was too slow and the turn was sent
    again (under `event_id`), `interrupted` the caller spoke over the agent (its text: what the
    caller heard of the answer), `done` the agent's whole turn (empty when the brain never
    answered), `ended` it is over."""

    kind: Literal["started", "heard", "said", "retried", "interrupted", "done", "ended"]
    text: str = ""
    event_id: int = 0
    at: float = field(default_factory=time.perf_counter)


@dataclass
class _Utterance:
    text: str
    frames: int
    started: bool = False


@dataclass
class _Turn:
    """The agent's answer in progress: the event id it comes under, and what of it was spoken."""

    event_id: int
    said: list[str] = field(default_factory=list)


class SpeechEngineStandIn:
    """Use `async with SpeechEngineStandIn(api_key) as engine:`; ELEVENLABS_BASE_URL is `engine.base_url`."""

    def __init__(self, api_key: str, engine_id: str = "seng_local") -> None:
        self.api_key = api_key
        self.elevenlabs = FakeElevenLabs(api_key, engine_id)
        self.elevenlabs.on_conversation = self._play
        self.elevenlabs.on_user_audio = self._audio
        # A turn not answered in time goes again under a new event id; False: under the same one.
        self.retry_with_new_event_id = True
        self._utterances: defaultdict[str, deque[_Utterance]] = defaultdict(deque)
        # ("speech", "") when the caller starts talking, ("words", text) once their words are recognised.
        self._heard: defaultdict[str, asyncio.Queue[tuple[str, str]]] = defaultdict(asyncio.Queue)
        self._events: defaultdict[str, asyncio.Queue[EngineEvent]] = defaultdict(asyncio.Queue)

    @property
    def base_url(self) -> str:
        return self.elevenlabs.base_url

    @property
    def engine_id(self) -> str:
        return self.elevenlabs.engine_id

    @property
    def cascade_timeout(self) -> float:
        """How long the engine waits for the brain's first words (`make configure` sets it)."""
        return float(self.elevenlabs.engine.get("cascade_timeout_seconds") or DEFAULT_CASCADE_TIMEOUT_S)

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
        utterance, heard = waiting[0], self._heard[call_sid]
        if not utterance.started:
            utterance.started = True
            heard.put_nowait(("speech", ""))
        utterance.frames -= max(1, len(base64.b64decode(payload)) // FRAME_BYTES)
        if utterance.frames <= 0:
            heard.put_nowait(("words", waiting.popleft().text))

    # --- the engine ---------------------------------------------------------------------------

    async def _play(self, conv: FakeConversation) -> None:
        variables = _variables(conv)
        call_sid = variables.get("call_sid", "")
        events = self._events[call_sid]
        events.put_nowait(EngineEvent("started", first_message(conv.initiation) or ""))
        config = self.elevenlabs.engine.get("speech_engine") or {}
        brain: SpeechEngineClient | None = None
        answering: asyncio.Task[None] | None = None
        try:
            brain = await SpeechEngineClient.open(
                config.get("ws_url", ""),
                api_key=self.api_key,
                headers=_headers(config.get("request_headers"), variables),
            )
            await brain.init(conv.conversation_id)
            brain.history = conv.history  # the greeting is the first line of the history
            heard = self._heard[call_sid]
            turn: _Turn | None = None
            while True:
                kind, text = await _next(heard, answering)
                if kind == "speech":
                    if answering is not None and not answering.done() and turn is not None:
                        await self._interrupt(conv, brain, answering, turn, events)
                    continue
                events.put_nowait(EngineEvent("heard", text))
                turn = _Turn(await brain.say(text, conv.next_event_id()))
                await conv.user_transcript(text, turn.event_id)
                answering = asyncio.create_task(self._answer(conv, brain, turn, events), name="engine-turn")
        except (OSError, InvalidStatus, TimeoutError):  # the brain refused, went away or never answered
            with contextlib.suppress(ConnectionClosed):
                await conv.error("the brain did not answer", code=1011)
                await conv.close(1011)
        finally:
            if answering is not None:
                answering.cancel()
                await asyncio.gather(answering, return_exceptions=True)
            events.put_nowait(EngineEvent("ended"))
            if brain is not None:
                with contextlib.suppress(Exception):
                    await brain.close_conversation()
                await brain.aclose()

    async def _answer(
        self, conv: FakeConversation, brain: SpeechEngineClient, turn: _Turn, events: asyncio.Queue[EngineEvent]
    ) -> None:
        """Wait for the brain's first words, sending the turn again when they are late; then speak
        the answer as it streams, and record it in the history."""
        answer = brain.answers[turn.event_id]
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await brain.wait_for(
                    lambda answer=answer: bool(answer.chunks or answer.finals or brain.closed), self.cascade_timeout
                )
                break
            except TimeoutError:
                if attempt == ATTEMPTS:
                    brain.abandon(turn.event_id)
                    events.put_nowait(EngineEvent("done", "", turn.event_id))
                    return
            again = conv.next_event_id() if self.retry_with_new_event_id else None
            turn.event_id = await brain.resend(turn.event_id, again)
            answer = brain.answers[turn.event_id]
            events.put_nowait(EngineEvent("retried", "", turn.event_id))
        spoken = 0
        while True:
            await brain.wait_for(
                lambda spoken=spoken: len(answer.chunks) > spoken or answer.finals or brain.closed, TURN_TIMEOUT_S
            )
            for chunk in answer.chunks[spoken:]:
                turn.said.append(chunk)
                events.put_nowait(EngineEvent("said", chunk, turn.event_id))
                for payload in speech_audio(chunk):
                    await conv.audio(payload, turn.event_id)
            spoken = len(answer.chunks)
            if answer.finals:
                break
            if brain.closed:
                raise ConnectionError("the brain hung up")
        await brain.final(turn.event_id)
        await conv.agent_response(answer.text, turn.event_id)
        events.put_nowait(EngineEvent("done", answer.text, turn.event_id))

    async def _interrupt(
        self,
        conv: FakeConversation,
        brain: SpeechEngineClient,
        answering: asyncio.Task[None],
        turn: _Turn,
        events: asyncio.Queue[EngineEvent],
    ) -> None:
        """The caller talks over the agent: stop speaking and drop the rest of the answer; the client
        is told, and what the caller heard of the answer stays in the history."""
        answering.cancel()
        await asyncio.gather(answering, return_exceptions=True)
        brain.abandon(turn.event_id)
        await conv.interruption(turn.event_id)
        await conv.audio(IN_FLIGHT, turn.event_id)
        said = "".join(turn.said)
        if said:
            conv.history.append({"role": "agent", "content": said})
        events.put_nowait(EngineEvent("interrupted", said, turn.event_id))


async def _next(heard: asyncio.Queue[tuple[str, str]], answering: asyncio.Task[None] | None) -> tuple[str, str]:
    """What the caller does next; an answer that fails meanwhile raises its error here."""
    get = asyncio.ensure_future(heard.get())
    try:
        if answering is not None and not answering.done():
            await asyncio.wait({get, answering}, return_when=asyncio.FIRST_COMPLETED)
        if answering is not None and answering.done() and not answering.cancelled():
            error = answering.exception()
            if error is not None:
                raise error
        return await get
    finally:
        get.cancel()


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
