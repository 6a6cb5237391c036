"""One live call as the rest of the app sees it: who is calling, what they have heard, how to end it.

The bridge creates a `CallControl` per media stream. Observers (the call registry and the tools
built on it) receive it when the call is ready and again when it ends; they never touch sockets.

What the caller has heard is learned from Twilio marks: the bridge sends a mark after each burst
of agent audio (and at least every second during a long one), and Twilio echoes a mark once
everything queued before it has played (or was cleared by an interruption).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

PROGRESS_HISTORY = 64


class EndReason(enum.StrEnum):
    CALLER_HUNG_UP = "caller_hung_up"  # Twilio sent stop
    # A REST redirect took the call off this stream (Twilio sent stop): to ring a colleague, or back to
    # the agent on a new stream. The call goes on; its record ends when the call does.
    TRANSFERRED = "transferred"
    AGENT_ENDED = "agent_ended"  # ElevenLabs closed the conversation normally
    REQUESTED = "requested"  # CallControl.end(): the agent said goodbye, or a tool ended the stream
    MAX_DURATION = "max_duration"  # MAX_CALL_SECONDS reached
    TWILIO_DROPPED = "twilio_dropped"  # Twilio's socket went away without a stop
    TWILIO_STALLED = "twilio_stalled"  # a send to Twilio did not complete in time
    UPSTREAM_UNREACHABLE = "upstream_unreachable"  # no signed URL, or the conversation socket did not open
    UPSTREAM_STALLED = "upstream_stalled"  # no conversation metadata in time, or a send did not complete
    UPSTREAM_DROPPED = "upstream_dropped"  # ElevenLabs sent an error or closed abnormally
    FORMAT_MISMATCH = "format_mismatch"  # the engine does not speak ulaw_8000 both ways
    DRAINED = "drained"  # the server is stopping and DRAIN_SECONDS ran out: a goodbye, then the line closes
    INTERNAL_ERROR = "internal_error"

    @property
    def failed(self) -> bool:
        """A failure gets the caller an apology and, if configured, a human (see the Connect action)."""
        return self not in _NORMAL


_NORMAL = frozenset(
    {
        EndReason.CALLER_HUNG_UP,
        EndReason.TRANSFERRED,
        EndReason.AGENT_ENDED,
        EndReason.REQUESTED,
        EndReason.MAX_DURATION,
        EndReason.DRAINED,
    }
)


@dataclass(frozen=True)
class Returned:
    """A call back with the agent on a new stream after a transfer to `department` ended in `result`
    (no_answer, busy, declined, voicemail, failed), or was refused because it was `closed`."""

    department: str
    result: str

    def encode(self) -> str:
        return f"{self.department}:{self.result}"

    @classmethod
    def decode(cls, text: str | None) -> Returned | None:
        department, sep, result = (text or "").partition(":")
        return cls(department, result) if sep and department and result else None


class CallEnded(Exception):
    """Raised by a leg of the bridge to end its call: the call's other tasks are cancelled."""

    def __init__(self, reason: EndReason) -> None:
        super().__init__(reason)
        self.reason = reason


class CallObserver(Protocol):
    """Told about every call. Callbacks must be quick: they run on the call's own tasks."""

    async def call_started(self, call: CallControl) -> None:
        """The stream is verified and the conversation is open: `call.conversation_id` is set."""

    async def call_ended(self, call: CallControl) -> None:
        """Both legs are closed; `call.end_reason` says why."""

    def dtmf(self, call: CallControl, digit: str) -> None:
        """The caller pressed a key. Schedule any slow work; do not block the audio."""


SendMark = Callable[[str], Awaitable[bool]]


class CallControl:
    """Stream control for one call: marks, what the caller has heard, and a graceful end."""

    def __init__(
        self, call_sid: str, stream_sid: str, caller: str, send_mark: SendMark, returned: Returned | None = None
    ) -> None:
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self.caller = caller
        self.returned = returned  # this stream brought the call back from a transfer
        self.started_at = datetime.now(UTC)
        self.conversation_id: str | None = None
        self.greeting: str | None = None  # what the agent said first, if anything
        self.end_reason: EndReason | None = None
        self.stop_reason = EndReason.CALLER_HUNG_UP  # what Twilio's `stop` means (see `redirecting`)
        self.ended = asyncio.Event()
        self._send_mark = send_mark
        self._flush_ids = itertools.count(1)
        self._flushes: dict[str, asyncio.Future[bool]] = {}
        self._end_requested = asyncio.Event()
        self._requested_reason = EndReason.REQUESTED
        # Audio marks: the bridge numbers them; the caller has heard everything once every mark has
        # come back and no audio has gone out after the last one.
        self._marks_sent = 0
        self._marks_heard = 0
        self._unmarked = False
        self._heard = asyncio.Event()
        self._heard.set()
        self._chunks = 0  # agent audio chunks sent
        # When the newest few bursts of audio began, with the chunks sent before each, so a baseline
        # can be taken after the fact.
        self._bursts: deque[tuple[float, int]] = deque(maxlen=PROGRESS_HISTORY)

    # --- for tools ------------------------------------------------------------------------

    @property
    def audio_progress(self) -> int:
        """Grows with every chunk of agent audio that goes out: a turn's baseline for "its line has
        started" (also when the line's audio joins a burst that was not marked yet)."""
        return self._chunks

    @property
    def playing(self) -> bool:
        """Agent audio has been sent that the caller has not finished hearing."""
        return self._unmarked or self._marks_heard < self._marks_sent

    async def flush(self, timeout: float = 15.0) -> bool:
        """Send a mark now and wait for its echo: True once everything queued before it has played."""
        if self.ended.is_set():
            return False
        name = f"flush-{next(self._flush_ids)}"
        echoed = asyncio.get_running_loop().create_future()
        self._flushes[name] = echoed
        try:
            if not await self._send_mark(name):
                return False
            async with asyncio.timeout(timeout):
                return await echoed
        except TimeoutError:
            return False
        finally:
            self._flushes.pop(name, None)

    async def wait_heard(self, settle: float = 0.6, timeout: float = 15.0) -> bool:
        """Wait until the caller has heard all agent audio and none has arrived for `settle` seconds.

        The agent's audio reaches the bridge after the text that caused it, so "the goodbye was heard"
        means: no audio in flight and the agent quiet for a moment. False if the call ended first or
        `timeout` passed.
        """
        try:
            async with asyncio.timeout(timeout):
                while not self.ended.is_set():
                    await self._heard.wait()
                    sent = self._marks_sent
                    await asyncio.sleep(settle)
                    if self.ended.is_set():
                        break
                    if sent == self._marks_sent and self._heard.is_set():
                        return True
        except TimeoutError:
            pass
        return False

    def end(self, reason: EndReason = EndReason.REQUESTED) -> None:
        """Close the stream gracefully (both legs). Twilio then runs the Connect action, which hangs up
        after a normal reason. Returns at once; await `ended` to know it is done."""
        if not self._end_requested.is_set():
            self._requested_reason = reason
            self._end_requested.set()

    def redirecting(self, reason: EndReason | None) -> None:
        """A REST update is taking the call off its stream for `reason` (None: Twilio refused it).
        Twilio ends the stream with `stop` when it applies one, and that `stop` is then not the
        caller hanging up. Said before the request: the `stop` may arrive before Twilio's answer."""
        self.stop_reason = reason or EndReason.CALLER_HUNG_UP

    # --- for the bridge -------------------------------------------------------------------

    def progress_at(self, when: float) -> int:
        """`audio_progress` as it was at wall-clock time `when` (a turn on another replica started then)."""
        return next((chunks for at, chunks in self._bursts if at > when), self._chunks)

    def audio_sent(self) -> None:
        """A chunk of agent audio went to Twilio (called per chunk: keep it cheap)."""
        self._chunks += 1
        if not self._unmarked:
            self._unmarked = True
            self._heard.clear()
            self._bursts.append((time.time(), self._chunks - 1))

    @property
    def unmarked_audio(self) -> bool:
        return self._unmarked

    def audio_mark(self, event_id: int) -> str:
        """The name of a mark covering all agent audio sent so far."""
        self._marks_sent += 1
        self._unmarked = False
        return f"{event_id}-{self._marks_sent}"

    def mark_echoed(self, name: str) -> None:
        echoed = self._flushes.get(name)
        if echoed is not None:
            if not echoed.done():
                echoed.set_result(True)
            return
        _, _, seq = name.rpartition("-")
        if seq.isdigit() and len(seq) < 12:
            self._marks_heard = min(max(self._marks_heard, int(seq)), self._marks_sent)
            if self._marks_heard == self._marks_sent and not self._unmarked:
                self._heard.set()

    def cleared(self) -> None:
        """Twilio's queue was emptied: nothing sent so far is still waiting to play."""
        self._marks_heard = self._marks_sent
        self._unmarked = False
        self._heard.set()

    async def end_requested(self) -> EndReason:
        await self._end_requested.wait()
        return self._requested_reason

    def finish(self, reason: EndReason) -> None:
        self.end_reason = reason
        self.ended.set()
        self._heard.set()
        for echoed in self._flushes.values():
            if not echoed.done():
                echoed.set_result(False)
