"""ElevenLabs conversation WebSocket frames, client side (protocols.md B2/B3).

Pure and unit-tested, like `twilio_frames`: `parse` returns a typed event or None on garbage, and
the builders splice already-checked base64 audio in without re-encoding it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import orjson

from app.telephony.twilio_frames import is_base64

PHONE_FORMAT = "ulaw_8000"
# Agent audio arrives in chunks of a fraction of a second; a megabyte is far beyond any real one.
MAX_FRAME_CHARS = 1024 * 1024


@dataclass(slots=True, frozen=True)
class Metadata:
    conversation_id: str
    input_format: str
    output_format: str


@dataclass(slots=True, frozen=True)
class Audio:
    payload: str
    event_id: int


@dataclass(slots=True, frozen=True)
class Interruption:
    event_id: int


@dataclass(slots=True, frozen=True)
class Ping:
    event_id: int


@dataclass(slots=True, frozen=True)
class AgentResponse:
    event_id: int | None


@dataclass(slots=True, frozen=True)
class Error:
    code: object
    error_type: str
    message: str


@dataclass(slots=True, frozen=True)
class Other:
    """A well-formed event the bridge has no use for (transcripts, vad scores, corrections...)."""

    type: str


ElevenLabsEvent = Metadata | Audio | Interruption | Ping | AgentResponse | Error | Other


def _event_id(body: object) -> int | None:
    value = body.get("event_id") if isinstance(body, dict) else None
    return value if type(value) is int and value >= 0 else None


def _text(value: object, limit: int = 200) -> str:
    return value[:limit] if isinstance(value, str) else ""


def parse(raw: object) -> ElevenLabsEvent | None:
    if not isinstance(raw, str) or len(raw) > MAX_FRAME_CHARS:
        return None
    try:
        frame = orjson.loads(raw)  # a fifth of json.loads's time, on every audio frame
    except ValueError:
        return None
    if not isinstance(frame, dict):
        return None
    kind = frame.get("type")
    if kind == "audio":
        body = frame.get("audio_event")
        payload = body.get("audio_base_64") if isinstance(body, dict) else None
        event_id = _event_id(body)
        if isinstance(payload, str) and event_id is not None and is_base64(payload):
            return Audio(payload, event_id)
        return None
    if kind == "ping":
        event_id = _event_id(frame.get("ping_event"))
        return Ping(event_id) if event_id is not None else None
    if kind == "interruption":
        event_id = _event_id(frame.get("interruption_event"))
        return Interruption(event_id) if event_id is not None else None
    if kind == "conversation_initiation_metadata":
        body = frame.get("conversation_initiation_metadata_event")
        if not isinstance(body, dict):
            return None
        conversation_id = body.get("conversation_id")
        if not isinstance(conversation_id, str) or not 0 < len(conversation_id) <= 128:
            return None
        return Metadata(
            conversation_id,
            _text(body.get("user_input_audio_format"), 32) or "unspecified",
            _text(body.get("agent_output_audio_format"), 32) or "unspecified",
        )
    if kind == "agent_response":
        return AgentResponse(_event_id(frame.get("agent_response_event")))
    if kind == "error":
        body = frame.get("error_event")
        body = body if isinstance(body, dict) else {}
        return Error(body.get("code"), _text(body.get("error_type"), 64), _text(body.get("message")))
    if isinstance(kind, str) and 0 < len(kind) <= 64:
        return Other(kind)
    return None


def user_audio(payload: str) -> str:
    """`payload` must already be checked base64 (it is spliced in, not re-encoded)."""
    return '{"user_audio_chunk":"' + payload + '"}'


def pong(event_id: int) -> str:
    return '{"type":"pong","event_id":' + str(int(event_id)) + "}"


def initiation(dynamic_variables: dict[str, str], first_message: str | None = None) -> str:
    """The conversation's initiation data; `first_message` is what the engine says at pickup (the
    engine must allow that override, or ElevenLabs refuses the conversation)."""
    frame: dict[str, object] = {"type": "conversation_initiation_client_data", "dynamic_variables": dynamic_variables}
    if first_message:
        frame["conversation_config_override"] = {"agent": {"first_message": first_message}}
    return json.dumps(frame)
