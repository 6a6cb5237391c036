"""Which live call a brain conversation belongs to, and the work each call owns.

The bridge learns a call's conversation id from ElevenLabs' metadata; the brain learns the call SID
from the `x-call-sid` header (when `make configure` set it up) and the conversation id from `init`.
Bridge and brain hear about a call in either order, so a lookup may wait a bounded time.

Per-call tool limits live on the call, not on a brain conversation, so no number of conversations
or turns can exceed them. Work that waits for the caller to hear a line and then acts belongs to
the call: the wait is cancelled when the call ends; an action already sent to Twilio is allowed to
finish (bounded) and is awaited when the registry closes.

In-process by default. `CallRegistry` and `LiveCall` are the seam for several replicas: a shared
store (Redis) would keep both keys and the limit counters (atomic increments), and hand transfer
and hang-up requests to the replica that holds the call's media stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.calls.control import CallControl, EndReason

log = logging.getLogger("switchboard.calls")

TRANSFER_TOOL = "transfer_call"
END_TOOL = "end_call"
MESSAGE_TOOL = "take_message"
# One transfer, one hang-up, three messages per call, however they are asked for.
CALL_LIMITS: Mapping[str, int] = {TRANSFER_TOOL: 1, END_TOOL: 1, MESSAGE_TOOL: 3}


@dataclass(frozen=True)
class ActionTimings:
    """Every wait before acting on a call is bounded; tests shorten these."""

    turn_timeout: float = 30.0  # the turn that said the line finishes streaming its text
    line_start_timeout: float = 4.0  # the line's first audio reaches the caller's stream (TTS follows text)
    settle: float = 0.6  # the agent quiet this long after the last audio played: the line is over
    heard_timeout: float = 20.0  # everything queued has played (Twilio's marks came back)
    audio_poll: float = 0.05  # how often to look for the line's first audio while waiting for it
    end_timeout: float = 1.0  # waits cancelled at call end must finish within this
    close_timeout: float = 12.0  # actions under way when the server stops (each is bounded by its own timeout)


@dataclass
class Line:
    """What the agent says in the turn that asked for an action: its audio has started once the
    call's `audio_progress` passes `since`; `spoken` is set once the turn's text has all gone out
    (or the turn ended)."""

    since: int
    spoken: asyncio.Event = field(default_factory=asyncio.Event)


Action = Callable[[], Awaitable[None]]


class LiveCall(Protocol):
    """A live call as tools see it."""

    call_sid: str
    caller: str

    @property
    def conversation_id(self) -> str | None: ...

    @property
    def ended(self) -> bool: ...

    @property
    def audio_progress(self) -> int:
        """Grows whenever agent audio goes out to the caller (see `Line`)."""

    def used(self, tool: str) -> int:
        """How many times `tool` has been claimed on this call."""

    def claim(self, tool: str) -> bool:
        """Use one of the call's allowance for `tool`; False once the limit is reached."""

    def after_line(self, name: str, line: Line | None, action: Action) -> None:
        """Run `action` once the caller has heard `line` (at once for None), unless the call ends first."""

    def end(self, reason: EndReason = EndReason.REQUESTED) -> None:
        """Close the media stream; Twilio then runs the Connect action."""


class CallRegistry(Protocol):
    """Live calls by call SID and by conversation id."""

    def lookup(self, *, call_sid: str | None = None, conversation_id: str | None = None) -> LiveCall | None:
        """The live call with this SID (preferred) or conversation id, if known right now."""

    async def find(
        self, *, call_sid: str | None = None, conversation_id: str | None = None, timeout: float = 0.0
    ) -> LiveCall | None:
        """The live call with this SID (preferred) or conversation id, waiting up to `timeout` for it."""

    async def close(self) -> None:
        """Cancel outstanding waits and finish (bounded) actions already under way."""


class LocalCall:
    """A call whose media stream this process holds."""

    def __init__(self, registry: InProcessCallRegistry, control: CallControl) -> None:
        self.control = control
        self.call_sid = control.call_sid
        self.caller = control.caller
        self._registry = registry
        self._used: dict[str, int] = {}
        self._waits: set[asyncio.Task[None]] = set()

    @property
    def conversation_id(self) -> str | None:
        return self.control.conversation_id

    @property
    def ended(self) -> bool:
        return self.control.ended.is_set()

    @property
    def audio_progress(self) -> int:
        return self.control.audio_progress

    def claim(self, tool: str) -> bool:
        used = self._used.get(tool, 0)
        if self.ended or used >= self._registry.limits.get(tool, 0):
            return False
        self._used[tool] = used + 1
        return True

    def used(self, tool: str) -> int:
        return self._used.get(tool, 0)

    def after_line(self, name: str, line: Line | None, action: Action) -> None:
        if self.ended:
            return
        task = asyncio.get_running_loop().create_task(self._after(line, action), name=f"{name}-{self.call_sid}")
        self._waits.add(task)
        task.add_done_callback(self._waits.discard)

    def end(self, reason: EndReason = EndReason.REQUESTED) -> None:
        self.control.end(reason)

    async def _after(self, line: Line | None, action: Action) -> None:
        if line is not None:
            heard = await self._heard(line)
            if self.ended:
                return
            if not heard:
                log.info("acting without confirmation that the line was heard", extra={"call_sid": self.call_sid})
        # From here the action belongs to the registry: the call ending (which a transfer causes)
        # must not cut a REST request in half.
        self._registry.run_action(action(), f"action-{self.call_sid}")

    async def _heard(self, line: Line) -> bool:
        timings = self._registry.timings
        control = self.control
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timings.turn_timeout):
                await line.spoken.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timings.line_start_timeout):
                # Polled: the bridge's per-chunk path stays free of wake-ups, and this runs only
                # while an action waits.
                while control.audio_progress <= line.since and not self.ended:  # noqa: ASYNC110
                    await asyncio.sleep(timings.audio_poll)
        return await control.wait_heard(settle=timings.settle, timeout=timings.heard_timeout)

    async def _stop(self) -> None:
        waits = list(self._waits)
        for task in waits:
            task.cancel()
        if waits:
            await asyncio.wait(waits, timeout=self._registry.timings.end_timeout)


class InProcessCallRegistry:
    """The registry for one process, told about calls by the bridge as a `CallObserver`."""

    def __init__(self, limits: Mapping[str, int] = CALL_LIMITS, timings: ActionTimings | None = None) -> None:
        self.limits = dict(limits)
        self.timings = timings or ActionTimings()
        self._by_sid: dict[str, LocalCall] = {}
        self._by_conversation: dict[str, LocalCall] = {}
        self._waiters: dict[str, list[asyncio.Future[LocalCall]]] = {}
        self._actions: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._by_sid)

    def get(self, call_sid: str) -> LocalCall | None:
        return self._by_sid.get(call_sid)

    def lookup(self, *, call_sid: str | None = None, conversation_id: str | None = None) -> LocalCall | None:
        if call_sid:
            return self._by_sid.get(call_sid)
        if conversation_id:
            return self._by_conversation.get(conversation_id)
        return None

    async def find(
        self, *, call_sid: str | None = None, conversation_id: str | None = None, timeout: float = 0.0
    ) -> LocalCall | None:
        found = self.lookup(call_sid=call_sid, conversation_id=conversation_id)
        key = _key(call_sid, conversation_id)
        if found is not None or key is None or timeout <= 0:
            return found
        waiter: asyncio.Future[LocalCall] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(key, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(key, None)

    def run_action(self, action: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(action, name=name)
        self._actions.add(task)
        task.add_done_callback(self._action_done)

    def _action_done(self, task: asyncio.Task[None]) -> None:
        self._actions.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call action failed", exc_info=task.exception())

    async def close(self) -> None:
        for call in list(self._by_sid.values()):
            await call._stop()
        pending = list(self._actions)
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.timings.close_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    # --- CallObserver ------------------------------------------------------------------------

    async def call_started(self, call: CallControl) -> None:
        live = LocalCall(self, call)
        self._by_sid[call.call_sid] = live
        if call.conversation_id:
            self._by_conversation[call.conversation_id] = live
        for key in (_key(call.call_sid, None), _key(None, call.conversation_id)):
            for waiter in self._waiters.pop(key, []) if key else []:
                if not waiter.done():
                    waiter.set_result(live)

    async def call_ended(self, call: CallControl) -> None:
        live = self._by_sid.pop(call.call_sid, None)
        if call.conversation_id and self._by_conversation.get(call.conversation_id) is live:
            del self._by_conversation[call.conversation_id]
        if live is not None:
            await live._stop()

    def dtmf(self, call: CallControl, digit: str) -> None:
        """Keys are the tools' business (see `Toolbox.dtmf` in `app.brain.tools`)."""


def _key(call_sid: str | None, conversation_id: str | None) -> str | None:
    if call_sid:
        return f"sid:{call_sid}"
    if conversation_id:
        return f"conv:{conversation_id}"
    return None
