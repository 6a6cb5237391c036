"""GET /ws: the brain WebSocket that ElevenLabs' Speech Engine dials, one per conversation.

Authentication happens before the upgrade is accepted. The conversation is driven by the SDK's
own `SpeechEngineSession`; a new transcript cancels the turn in flight, which closes the model's
HTTP stream through the generator's `aclose`.

The call a conversation belongs to (for its tools) is named by the `x-call-sid` header, which
ElevenLabs fills from the call SID dynamic variable the bridge sends (`make configure` sets that
up); without it, the conversation binds by the conversation id from `init`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Mapping
from typing import Any

from elevenlabs.speech_engine.resource import verify_speech_engine_jwt
from elevenlabs.speech_engine.session import SpeechEngineSession
from elevenlabs.speech_engine.types import ConversationMessage
from quart import Blueprint, websocket

from app.brain.turn import TurnRecord
from app.observability import conversation_id_var, event_id_var
from app.services import Services, services
from app.settings import Settings
from app.speech_engine_contract import BRAIN_PATH, CALL_SID_HEADER, SECRET_HEADER

log = logging.getLogger("switchboard.brain")
brain = Blueprint("brain", __name__)

JWT_HEADER = "X-Elevenlabs-Speech-Engine-Authorization"
# A stalled ElevenLabs socket must not hold a turn (or the process) forever.
SEND_TIMEOUT_S = 5.0


def rejection(headers: Mapping[str, str], settings: Settings) -> str | None:
    """Why this upgrade must be refused, or None when every configured check passes."""
    if not settings.brain_auth_configured:
        return "not_configured"
    api_key = settings.secret("elevenlabs_api_key")
    if api_key:
        token = headers.get(JWT_HEADER)
        if not token:
            return "missing_jwt"
        try:
            verify_speech_engine_jwt(token, api_key)
        except ValueError:
            return "bad_jwt"
    secret = settings.secret("shared_secret")
    if secret:
        offered = headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(offered.encode(), secret.encode()):
            return "bad_secret"
    return None


class QuartSocket:
    """The SDK's WebSocketLike over Quart's websocket (which has neither recv nor receive_text)."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws

    async def recv(self) -> str | bytes:
        return await self._ws.receive()

    async def send(self, data: str) -> None:
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await self._ws.send(data)

    async def close(self) -> None:
        await self._ws.close(1000)


@brain.websocket(BRAIN_PATH)
async def brain_ws() -> Any:
    svc = services()
    reason = rejection(websocket.headers, svc.settings)
    if reason is not None:
        svc.metrics.brain_rejected.labels(reason).inc()
        log.warning("brain connection refused: %s", reason)
        return "unauthorized\n", 401
    await websocket.accept()
    session = SpeechEngineSession(QuartSocket(websocket._get_current_object()))
    conversation = Conversation(svc, session, websocket.headers.get(CALL_SID_HEADER))
    conversation.wire()
    try:
        await session.run()
    finally:
        await conversation.close()
        log.info("brain session ended", extra={"conversation_id": session.conversation_id})


class Conversation:
    """One brain conversation: its handlers and what they share."""

    def __init__(self, svc: Services, session: SpeechEngineSession, call_sid: str | None = None) -> None:
        self.svc = svc
        self.session = session
        self.tools = svc.toolbox.conversation(call_sid) if svc.toolbox is not None else None
        self.caller = svc.lookups.conversation(lambda: self.tools.known_call_sid if self.tools is not None else None)

    def wire(self) -> None:
        self.session.on("init", self.on_init)
        self.session.on("user_transcript", self.on_transcript)
        self.session.on("error", self.on_error)

    async def close(self) -> None:
        if self.tools is not None:
            await self.tools.close()

    async def on_init(self, conversation_id: str | None) -> None:
        if self.tools is not None:
            self.tools.conversation_id = conversation_id
        log.info("brain session started", extra={"conversation_id": conversation_id})

    async def on_error(self, err: Exception) -> None:
        # Malformed frames and handler errors: counted and logged, never the end of the session.
        self.svc.metrics.dropped_frames.labels("brain", type(err).__name__).inc()
        log.warning("brain frame dropped: %s", err, extra={"conversation_id": self.session.conversation_id})

    async def on_transcript(self, transcript: list[ConversationMessage]) -> None:
        # The SDK keeps the turn's event id privately; the record needs it for the log line.
        record = TurnRecord(self.session.conversation_id, self.session._current_event_id)
        conversation_id_var.set(record.conversation_id)
        event_id_var.set(record.event_id)
        assert self.svc.pipeline is not None
        answer = self.svc.pipeline.answer(transcript, record, self.tools, self.caller)
        try:
            await self.session.send_response(answer)
        except asyncio.CancelledError:
            record.outcome = "interrupted"
            raise
        finally:
            await answer.aclose()
            record.call_sid = self.tools.known_call_sid if self.tools is not None else None
            record.finish(self.svc.metrics)
            if self.svc.records.recording:
                self.svc.records.record(record.event())
