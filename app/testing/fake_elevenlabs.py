"""A stand-in for ElevenLabs on the client side (protocols.md B): the REST API and the conversation socket.

- REST (Quart on Hypercorn): `GET /v1/convai/conversation/get-signed-url` (xi-api-key checked) hands
  out a single-use signed URL; `GET`/`PATCH /v1/speech-engine/{id}` for `make configure`.
- The conversation WebSocket (the `websockets` server, as fast as the real thing needs to be for a
  benchmark): checks the signature, reads `conversation_initiation_client_data`, sends
  `conversation_initiation_metadata` with the configured audio formats, speaks the first message
  when the initiation data overrides it (and refuses the conversation, as ElevenLabs does, when
  the engine does not allow that override), then does what the test scripts through
  `FakeConversation` (audio, interruption, ping, agent_response, user_transcript, raw frames,
  close), echoes caller audio back as agent audio (`echo=True`), or hands the conversation to
  `on_conversation` (the whole engine, in `fake_engine`).

`delay` puts a one-way network delay on every message and response, both ways (benchmarks).

Faults: `refuse_signed_url` (an HTTP status), `signed_url_gate` (hand one out only once the test says),
`refuse_socket`, `stall` (never send metadata), formats
other than ulaw_8000, malformed frames, error events (alone, or before a close) and closing mid-call
through the conversation handle, and `patch_ignores` (fields a PATCH of the engine silently leaves
as they were).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hmac
import itertools
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from quart import Quart, request
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from app.testing.latency import Outbox, arrivals
from app.testing.live_server import LiveServer
from app.testing.twilio_caller import FRAME_BYTES, ulaw_frames

CONVERSATION_PATH = "/v1/convai/conversation"
OVERRIDE_REFUSED = "Override for field 'first_message' is not allowed by config."
SPOKEN_CHARS_PER_S = 15  # how fast the stand-in's voice "speaks" text
FRAMES_PER_AUDIO_EVENT = 10  # 200 ms of audio per audio event, as the real engine sends a few per second
_VOICE = [base64.b64encode(frame).decode() for frame in ulaw_frames(1.0, frequency=400, amplitude=6000)]


def speech_audio(text: str) -> list[str]:
    """The stand-in's text-to-speech: real μ-law audio as long as the text takes to say, in
    base64 chunks of FRAMES_PER_AUDIO_EVENT frames (a tone, not words)."""
    frames = max(1, round(len(text) / SPOKEN_CHARS_PER_S * 8000 / FRAME_BYTES))
    payloads = [_VOICE[i % len(_VOICE)] for i in range(frames)]
    raw = [base64.b64decode(p) for p in payloads]
    return [
        base64.b64encode(b"".join(raw[i : i + FRAMES_PER_AUDIO_EVENT])).decode()
        for i in range(0, frames, FRAMES_PER_AUDIO_EVENT)
    ]


def first_message(initiation: dict[str, Any] | None) -> str | None:
    """The first-message override in a conversation's initiation data, if any."""
    override = (initiation or {}).get("conversation_config_override")
    agent = override.get("agent") if isinstance(override, dict) else None
    text = agent.get("first_message") if isinstance(agent, dict) else None
    return text if isinstance(text, str) and text else None


@dataclass
class FakeConversation:
    """One conversation as the fake server sees it; tests script the agent's side through it."""

    ws: ServerConnection
    conversation_id: str
    echo: bool = False
    record: bool = True
    stalled: bool = False
    on_user_audio: Callable[[FakeConversation, str], None] | None = None
    initiation: dict[str, Any] | None = None
    history: list[dict[str, str]] = field(default_factory=list)  # what was said, as the brain gets it
    user_audio: list[str] = field(default_factory=list)
    agent_audio: list[str] = field(default_factory=list)  # what the agent said, as sent
    pongs: list[Any] = field(default_factory=list)
    other: list[Any] = field(default_factory=list)
    closed: bool = False
    outbox: Outbox[str] | None = None  # what is sent, on its way (with a network delay)
    _event_ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _updates: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def send(self, message: dict[str, Any] | str) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        if self.outbox is not None:
            self.outbox.put(text)
        else:
            await self.ws.send(text)

    async def audio(self, payload: str, event_id: int) -> None:
        await self.send({"type": "audio", "audio_event": {"audio_base_64": payload, "event_id": event_id}})
        if self.record:
            self.agent_audio.append(payload)
            async with self._updates:
                self._updates.notify_all()

    async def interruption(self, event_id: int) -> None:
        await self.send({"type": "interruption", "interruption_event": {"event_id": event_id}})

    async def ping(self, event_id: int, ping_ms: int | None = None) -> None:
        await self.send({"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": ping_ms}})

    async def agent_response(self, text: str, event_id: int) -> None:
        await self.send(
            {"type": "agent_response", "agent_response_event": {"agent_response": text, "event_id": event_id}}
        )

    async def user_transcript(self, text: str, event_id: int) -> None:
        await self.send(
            {"type": "user_transcript", "user_transcription_event": {"user_transcript": text, "event_id": event_id}}
        )

    async def error(self, message: str = "boom", code: int = 1011, error_type: str = "internal") -> None:
        """An error event. ElevenLabs sends one on its own (the conversation goes on), or just before
        it closes the socket (`fail`)."""
        await self.send({"type": "error", "error_event": {"code": code, "message": message, "error_type": error_type}})

    async def fail(self, message: str = "boom", code: int = 1011) -> None:
        """The conversation cannot go on: an error event, then the socket closes with `code`."""
        await self.error(message, code)
        await self.close(code, message)

    async def speak(self, text: str, event_id: int) -> None:
        """The agent says `text`: its audio (the stand-in's voice), then the agent_response event."""
        for payload in speech_audio(text):
            await self.audio(payload, event_id)
        await self.agent_response(text, event_id)

    def next_event_id(self) -> int:
        return next(self._event_ids)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.outbox is not None:
            await self.outbox.aclose()
        await self.ws.close(code, reason)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self._updates:
            await self._updates.wait_for(predicate)

    async def _received(self, raw: str | bytes) -> None:
        message = json.loads(raw)
        if "user_audio_chunk" in message:
            payload = message["user_audio_chunk"]
            if self.on_user_audio is not None:
                self.on_user_audio(self, payload)
            if self.record:
                self.user_audio.append(payload)
            if self.echo:
                await self.audio(payload, next(self._event_ids))
            if not self.record:
                return
        elif message.get("type") == "conversation_initiation_client_data":
            self.initiation = message
        elif message.get("type") == "pong":
            self.pongs.append(message.get("event_id"))
        else:
            self.other.append(message)
        async with self._updates:
            self._updates.notify_all()


class FakeElevenLabs:
    """Use `async with FakeElevenLabs(api_key, engine_id) as fake:`; point ELEVENLABS_BASE_URL at `fake.base_url`."""

    def __init__(
        self,
        api_key: str,
        engine_id: str = "seng_test",
        *,
        input_format: str = "ulaw_8000",
        output_format: str = "ulaw_8000",
        echo: bool = False,
        record: bool = True,
        engine: dict[str, Any] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.delay = delay
        self.engine_id = engine_id
        self.input_format = input_format
        self.output_format = output_format
        self.echo = echo
        self.record = record
        self.refuse_signed_url: int | None = None
        self.refuse_socket = False
        self.stall = False
        # When set, conversations wait for this event before sending their metadata.
        self.metadata_gate: asyncio.Event | None = None
        # When set, signed URLs are handed out once this event is set (an ElevenLabs slow to answer).
        self.signed_url_gate: asyncio.Event | None = None
        self.on_user_audio: Callable[[FakeConversation, str], None] | None = None
        # Plays the rest of each conversation once it has started (see `fake_engine`).
        self.on_conversation: Callable[[FakeConversation], Awaitable[None]] | None = None
        self.patch_ignores: set[str] = set()
        self.signed_url_requests = 0
        self.socket_attempts = 0
        self.conversations: list[FakeConversation] = []
        self.engine = engine if engine is not None else default_engine(engine_id)
        self.engine_patches: list[dict[str, Any]] = []
        self._signatures: set[str] = set()
        self._conversation_ids = itertools.count(1)
        self._new_conversation = asyncio.Condition()
        self._ws_server: Server | None = None
        self._rest: LiveServer | None = None

    @property
    def base_url(self) -> str:
        assert self._rest is not None
        return self._rest.http_url

    @property
    def ws_url(self) -> str:
        assert self._ws_server is not None
        host, port = next(iter(self._ws_server.sockets)).getsockname()[:2]
        return f"ws://{host}:{port}"

    async def __aenter__(self) -> FakeElevenLabs:
        self._ws_server = await serve(
            self._conversation,
            "127.0.0.1",
            0,
            process_request=self._check_upgrade,
            process_response=self._answer_upgrade,
            compression=None,
            max_size=2**20,
        )
        self._rest = LiveServer(self._rest_app())
        await self._rest.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for gate in (self.metadata_gate, self.signed_url_gate):
            if gate is not None:
                gate.set()
        if self._rest is not None:
            await self._rest.__aexit__(*exc)
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()

    async def conversation(self, index: int = 0, timeout: float = 5.0) -> FakeConversation:
        """The index-th conversation, once its initiation data has arrived."""
        async with asyncio.timeout(timeout), self._new_conversation:
            await self._new_conversation.wait_for(lambda: len(self.conversations) > index)
        conv = self.conversations[index]
        if not conv.stalled:
            await conv.wait_for(lambda: conv.initiation is not None, timeout)
        return conv

    # --- REST -----------------------------------------------------------------------------------

    def _rest_app(self) -> Quart:
        app = Quart("fake_elevenlabs")

        def authorised() -> bool:
            return hmac.compare_digest(request.headers.get("xi-api-key", ""), self.api_key)

        @app.before_request
        async def request_on_its_way() -> None:
            await asyncio.sleep(self.delay)

        @app.after_request
        async def answer_on_its_way(response: Any) -> Any:
            await asyncio.sleep(self.delay)
            return response

        @app.get("/healthz")
        async def healthz() -> tuple[str, int]:
            return "ok", 200

        @app.get("/v1/convai/conversation/get-signed-url")
        async def signed_url() -> tuple[dict[str, Any], int]:
            self.signed_url_requests += 1
            if self.signed_url_gate is not None:
                await self.signed_url_gate.wait()
            if not authorised():
                return {"detail": {"status": "invalid_api_key"}}, 401
            if self.refuse_signed_url is not None:
                return {"detail": HTTPStatus(self.refuse_signed_url).phrase}, self.refuse_signed_url
            agent_id = request.args.get("agent_id", "")
            if agent_id != self.engine_id:
                return {"detail": [{"loc": ["query", "agent_id"], "msg": "not found"}]}, 422
            signature = secrets.token_urlsafe(16)
            self._signatures.add(signature)
            url = f"{self.ws_url}{CONVERSATION_PATH}?agent_id={agent_id}&conversation_signature={signature}"
            return {"signed_url": url}, 200

        @app.route("/v1/speech-engine/<engine_id>", methods=["GET", "PATCH"])
        async def speech_engine(engine_id: str) -> tuple[dict[str, Any], int]:
            if not authorised():
                return {"detail": {"status": "invalid_api_key"}}, 401
            if engine_id != self.engine_id:
                return {"detail": "speech engine not found"}, 404
            if request.method == "PATCH":
                patch = await request.get_json()
                self.engine_patches.append(patch)
                for key, value in patch.items():
                    if key in self.patch_ignores:
                        continue
                    if isinstance(value, dict) and isinstance(self.engine.get(key), dict):
                        self.engine[key] = {**self.engine[key], **value}
                    else:
                        self.engine[key] = value
            return copy.deepcopy(self.engine), 200

        return app

    # --- the conversation socket ----------------------------------------------------------------

    async def _check_upgrade(self, connection: ServerConnection, req: Request) -> Response | None:
        await asyncio.sleep(self.delay)  # the upgrade request on its way
        self.socket_attempts += 1
        parts = urlsplit(req.path)
        query = parse_qs(parts.query)
        signature = (query.get("conversation_signature") or [""])[0]
        if self.refuse_socket or parts.path != CONVERSATION_PATH or signature not in self._signatures:
            return connection.respond(HTTPStatus.FORBIDDEN, "forbidden\n")
        self._signatures.discard(signature)
        return None

    async def _answer_upgrade(self, connection: ServerConnection, req: Request, response: Response) -> None:
        await asyncio.sleep(self.delay)  # the answer on its way back

    async def _conversation(self, ws: ServerConnection) -> None:
        conv = FakeConversation(
            ws, f"conv_fake_{next(self._conversation_ids)}", echo=self.echo, record=self.record, stalled=self.stall
        )
        conv.on_user_audio = self.on_user_audio
        async with self._new_conversation:
            self.conversations.append(conv)
            self._new_conversation.notify_all()
        stall = conv.stalled
        played: asyncio.Task[None] | None = None
        received = arrivals(ws, self.delay) if self.delay else None
        if self.delay:
            conv.outbox = Outbox(ws.send, self.delay, f"{conv.conversation_id}-outbox")
        try:
            if not stall:
                first = json.loads(await anext(received) if received is not None else await ws.recv())
                if first.get("type") == "conversation_initiation_client_data":
                    conv.initiation = first
                async with conv._updates:
                    conv._updates.notify_all()
                greeting = first_message(conv.initiation)
                if greeting and (self.engine.get("overrides") or {}).get("first_message") is not True:
                    await conv.error(OVERRIDE_REFUSED, code=1008, error_type="policy_violation")
                    await conv.close(1008, OVERRIDE_REFUSED)
                    return
                if self.metadata_gate is not None:
                    await self.metadata_gate.wait()
                await conv.send(
                    {
                        "type": "conversation_initiation_metadata",
                        "conversation_initiation_metadata_event": {
                            "conversation_id": conv.conversation_id,
                            "agent_output_audio_format": self.output_format,
                            "user_input_audio_format": self.input_format,
                        },
                    }
                )
                if greeting:
                    conv.history.append({"role": "agent", "content": greeting})
                    await conv.speak(greeting, conv.next_event_id())
                if self.on_conversation is not None:
                    played = asyncio.create_task(self.on_conversation(conv), name=f"{conv.conversation_id}-engine")
            async for raw in received or ws:
                if not stall:
                    await conv._received(raw)
        except (ConnectionClosed, StopAsyncIteration):
            pass
        finally:
            if received is not None:
                await received.aclose()
            if conv.outbox is not None:
                await conv.outbox.aclose()
            conv.closed = True
            async with conv._updates:
                conv._updates.notify_all()
            if played is not None:  # the caller's side is gone: the engine hangs up on the brain
                played.cancel()
                await asyncio.gather(played, return_exceptions=True)


def default_engine(engine_id: str) -> dict[str, Any]:
    """A Speech Engine as GET returns it, set up for a browser rather than a phone."""
    return {
        "speech_engine_id": engine_id,
        "name": "Switchboard",
        "speech_engine": {"ws_url": "wss://old.example/ws", "request_headers": {"x-team": "support"}},
        "asr": {"quality": "high", "provider": "elevenlabs", "user_input_audio_format": "pcm_16000", "keywords": []},
        "tts": {"model_id": "eleven_turbo_v2", "voice_id": "voice_1", "agent_output_audio_format": "pcm_16000"},
        "turn": {},
        "vad": {},
        "conversation": {},
        "privacy": {},
        "call_limits": {},
        "auth": {"enable_auth": True},
        "language": "en",
        "cascade_timeout_seconds": 5,
        "tags": [],
        "overrides": {},
        "metadata": {"created_at_unix_secs": 0},
    }
