"""What happened on a call, as plain values: made on the hot path (cheap, no I/O, nothing redacted
yet), written later by the recorder's one writer task (`app.records.writer`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.knowledge.retrieval import Passage


@dataclass(frozen=True, slots=True)
class CallReceived:
    """Twilio's webhook: a call is ringing."""

    call_sid: str
    caller: str | None  # +E.164
    at: datetime


@dataclass(frozen=True, slots=True)
class CallRefused:
    """The webhook turned the call away: `busy` (no free slot) or `fallback` (the bridge is not configured)."""

    call_sid: str
    reason: str
    at: datetime


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """The media stream and the conversation are up."""

    call_sid: str
    conversation_id: str | None
    at: datetime
    greeting: str | None = None


@dataclass(frozen=True, slots=True)
class CallerLookedUp:
    """What the caller lookup came to (answered, unknown, timeout, error, invalid, too_large), and
    the caller's data as kept (checked, capped, redacted)."""

    call_sid: str
    outcome: str
    data: dict[str, Any] | None
    at: datetime


@dataclass(frozen=True, slots=True)
class TransferResult:
    """Where a transfer stands: `ringing`, then `connected`, `no_answer`, `busy`, `declined`,
    `voicemail`, `failed` or `canceled` (the caller hung up while it rang); or `closed`, refused
    because nobody is in. The latest one is the call's."""

    call_sid: str
    department: str
    result: str
    at: datetime


@dataclass(frozen=True, slots=True)
class CallEnded:
    call_sid: str
    reason: str  # caller_hung_up, transferred, agent_ended, max_duration, drained, fallback
    detail: str  # the bridge's own reason
    at: datetime
    duration_s: float


@dataclass(slots=True)
class TurnDone:
    """One brain turn. Texts are as the caller said them after sanitising; the recorder redacts them."""

    call_sid: str | None
    conversation_id: str | None
    event_id: int | None
    started_at: datetime
    caller_text: str
    agent_text: str
    interrupted: bool
    outcome: str
    abstained: bool | None
    fallback: str | None
    tools: list[dict[str, str]]
    timings_ms: dict[str, float]
    sources: tuple[Passage, ...] = ()  # the passages the answer was given to read
    unanswered: str | None = None  # the question the documents could not answer
    # Filled by the writer and kept across retries, so a failed write does not embed twice.
    gap_vector: Any = field(default=None)


RecordEvent = CallReceived | CallRefused | CallAnswered | CallerLookedUp | TransferResult | CallEnded | TurnDone
