"""A stand-in for ElevenLabs' Speech Engine dialling the brain at /ws (protocols.md part C).

It connects with the same headers (the JWT minted as ElevenLabs mints it, plus the engine's
`request_headers`), sends init / user_transcript with the whole history and rising event ids /
ping / close, and collects the agent_response messages per event id. A turn can be sent again
(`resend`, as the engine does when the brain is slow) and a turn's event id given up (`abandon`:
what still comes for it is dropped, as the engine drops responses of an interrupted or abandoned
turn).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

ISSUER = "https://api.elevenlabs.io/convai/speech-engine"
SUBJECT = "convai_speech_engine_upstream"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_jwt(
    api_key: str,
    *,
    issuer: str = ISSUER,
    subject: str = SUBJECT,
    issued_at: float | None = None,
    lifetime_s: float = 300,
) -> str:
    """An HS256 JWT keyed with sha256(api key), as ElevenLabs signs the brain upgrade."""
    now = int(time.time() if issued_at is None else issued_at)
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps({"iss": issuer, "sub": subject, "iat": now, "exp": now + int(lifetime_s)}).encode())
    secret = hashlib.sha256(api_key.strip().encode()).digest()
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(signature)}"


@dataclass
class Answer:
    event_id: int
    chunks: list[str] = field(default_factory=list)
    finals: int = 0
    sent_at: float = 0.0
    first_chunk_at: float | None = None
    final_at: float | None = None

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def first_chunk_s(self) -> float | None:
        return None if self.first_chunk_at is None else self.first_chunk_at - self.sent_at


class SpeechEngineClient:
    """One fake conversation. Use `async with SpeechEngineClient.connect(...)`."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.history: list[dict[str, str]] = []
        self.answers: dict[int, Answer] = {}
        self.pongs = 0
        self.closed = False
        self.other: list[Any] = []
        self.dropped = 0  # agent_response messages of abandoned turns
        self._abandoned: set[int] = set()
        self._sent: dict[int, list[dict[str, str]]] = {}
        self._next_event_id = 1
        self._updates = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        self._finals: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        api_key: str | None = None,
        shared_secret: str | None = None,
        headers: dict[str, str] | None = None,
        jwt: str | None = None,
    ) -> SpeechEngineClient:
        sent = dict(headers or {})
        if jwt is None and api_key:
            jwt = mint_jwt(api_key)
        if jwt is not None:
            sent["X-Elevenlabs-Speech-Engine-Authorization"] = jwt
        if shared_secret is not None:
            sent["x-api-key"] = shared_secret
        ws = await connect(url, additional_headers=sent, open_timeout=10, max_size=2**20)
        client = cls(ws)
        client._reader = asyncio.create_task(client._read(), name="speech-engine-client-reader")
        return client

    async def __aenter__(self) -> SpeechEngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                received = time.perf_counter()
                msg = json.loads(raw)
                if msg.get("type") == "pong":
                    self.pongs += 1
                elif msg.get("type") == "agent_response" and msg["event_id"] in self._abandoned:
                    self.dropped += 1
                elif msg.get("type") == "agent_response":
                    answer = self.answers.setdefault(msg["event_id"], Answer(msg["event_id"]))
                    if msg["is_final"]:
                        answer.finals += 1
                        answer.final_at = received
                        self._finals[answer.event_id].set()
                    elif msg["content"]:
                        answer.first_chunk_at = answer.first_chunk_at or received
                        answer.chunks.append(msg["content"])
                else:
                    self.other.append(msg)
                async with self._updates:
                    self._updates.notify_all()
        except Exception:  # the connection ended; waiters see it through `closed`
            pass
        finally:
            self.closed = True
            async with self._updates:
                self._updates.notify_all()

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def init(self, conversation_id: str = "conv_test") -> None:
        await self.send_json({"type": "init", "conversation_id": conversation_id})

    async def say(self, text: str, event_id: int | None = None) -> int:
        """Send the caller's utterance with the whole history; returns its event id (the next one
        unless given: an engine numbers its events across both sockets)."""
        self.history.append({"role": "user", "content": text})
        if event_id is None:
            event_id = self._next_event_id
        self._next_event_id = max(self._next_event_id, event_id + 1)
        await self._send_turn(list(self.history), event_id)
        return event_id

    async def resend(self, event_id: int, new_event_id: int | None = None) -> int:
        """Send a turn again, as it was sent: under its own event id, or under a new one (the old one
        is then abandoned). Returns the event id the answer now comes under."""
        if new_event_id is None:  # what comes under the id from now on is the answer
            self.answers[event_id] = Answer(event_id, sent_at=time.perf_counter())
            self._finals[event_id].clear()
            await self._send_turn(self._sent[event_id], event_id)
            return event_id
        self.abandon(event_id)
        self._next_event_id = max(self._next_event_id, new_event_id + 1)
        await self._send_turn(self._sent[event_id], new_event_id)
        return new_event_id

    def abandon(self, event_id: int) -> None:
        """Give up on a turn: whatever still comes for it is dropped."""
        self._abandoned.add(event_id)

    async def _send_turn(self, transcript: list[dict[str, str]], event_id: int) -> None:
        self._sent[event_id] = transcript
        self.answers[event_id] = self.answers.get(event_id) or Answer(event_id, sent_at=time.perf_counter())
        await self.send_json({"type": "user_transcript", "user_transcript": transcript, "event_id": event_id})

    async def final(self, event_id: int, timeout: float = 10.0) -> Answer:
        """Wait for the answer's final message, and record it in the history as ElevenLabs would."""
        async with asyncio.timeout(timeout):
            await self._finals[event_id].wait()
        answer = self.answers[event_id]
        if answer.text:
            self.history.append({"role": "agent", "content": answer.text})
        return answer

    async def ask(self, text: str, timeout: float = 10.0) -> Answer:
        return await self.final(await self.say(text), timeout)

    async def wait_for(self, predicate: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self._updates:
            await self._updates.wait_for(predicate)

    async def ping(self) -> None:
        await self.send_json({"type": "ping"})

    async def close_conversation(self) -> None:
        await self.send_json({"type": "close"})
