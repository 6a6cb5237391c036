"""Which live call a brain conversation belongs to, and the work each call owns.

The bridge learns a call's conversation id from ElevenLabs' metadata; the brain learns the call SID
from the `x-call-sid` header (when `make configure` set it up) and the conversation id from `init`.
Bridge and brain hear about a call in either order, so a lookup may wait a bounded time.

Per-call tool limits live on the call, not on a brain conversation, so no number of conversations
or turns can exceed them; a claim is atomic. The limits are the tools' (`app.brain.tools.registry`
installs them). Actions (transfer, hang up, back to the agent) are values: they are
carried out where the call's media stream is, once the caller has heard the line that announced
them, by the executor the tools register. The wait is cancelled when the call ends; an action
already sent to Twilio is allowed to finish (bounded) and is awaited when the registry closes.

This module is the registry of one process; `app.calls.shared` keeps the same state in Redis so the
brain on one replica can act on a call whose media stream another replica holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from app.calls.control import CallControl, EndReason, Outbound, Returned

log = logging.getLogger("switchboard.calls")

# What a claim on a call's allowance came to.
Claim = Literal["accepted", "limit", "conflict", "unavailable"]


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
    """What the agent says in the turn that asked for an action. Its audio has started once the
    call's `audio_progress` passes `since` (taken where the stream is; None until known there), the
    turn having started at wall-clock `at`; `spoken` is set once the turn's text has all gone out."""

    since: int | None
    at: float = field(default_factory=time.time)
    spoken: asyncio.Event = field(default_factory=asyncio.Event)


ActionKind = Literal["transfer", "end", "back"]


@dataclass(frozen=True)
class CallAction:
    """Something to do to a call once its line is heard: `transfer` it to a department (telling
    whoever answers the caller's `name` and `reason`), `end` it, or bring it `back` to the agent on
    a new stream, saying the department is closed."""

    kind: ActionKind
    department: str | None = None
    say: str | None = None
    reason: str | None = None
    name: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CallAction | None:
        try:
            data = json.loads(text)
            fields = {key: data.get(key) for key in ("department", "say", "reason", "name")}
            if data["kind"] not in ("transfer", "end", "back") or not all(
                value is None or isinstance(value, str) for value in fields.values()
            ):
                return None
            return cls(data["kind"], **fields)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


Executor = Callable[["LiveCall", CallAction], Awaitable[None]]


class LiveCall(Protocol):
    """A live call as tools see it, wherever its media stream is."""

    call_sid: str
    caller: str

    @property
    def conversation_id(self) -> str | None: ...

    @property
    def ended(self) -> bool: ...

    @property
    def returned(self) -> Returned | None:
        """The transfer this call came back to the agent from, if it did."""

    @property
    def outbound(self) -> Outbound | None:
        """The call-back this call is, if the agent placed it."""

    def line(self) -> Line:
        """Where the audio of a turn starting now begins."""

    def used(self, tool: str) -> int:
        """How many times `tool` has been claimed on this call (as far as this process knows)."""

    async def claim(self, tool: str, conflicts: Sequence[str] = ()) -> Claim:
        """Use one of the call's allowance for `tool`, unless a conflicting tool was used."""

    def after_line(self, action: CallAction, line: Line | None) -> None:
        """Carry `action` out once the caller has heard `line` (at once for None), unless the call ends first."""

    def end(self, reason: EndReason = EndReason.REQUESTED) -> None:
        """Close the media stream; Twilio then runs the Connect action."""


class CallRegistry(Protocol):
    """Live calls by call SID and by conversation id."""

    executor: Executor | None
    limits: dict[str, int]

    def lookup(self, *, call_sid: str | None = None, conversation_id: str | None = None) -> LiveCall | None:
        """The call with this SID (preferred) or conversation id whose media stream is in this process."""

    async def find(
        self, *, call_sid: str | None = None, conversation_id: str | None = None, timeout: float = 0.0
    ) -> LiveCall | None:
        """The live call with this SID (preferred) or conversation id, waiting up to `timeout` for it."""

    def run_action(self, action: Coroutine[Any, Any, None], name: str) -> None:
        """Run work on a call that must not be cut short when the call ends; awaited at `close`."""

    async def close(self) -> None:
        """Cancel outstanding waits and finish (bounded) actions already under way."""


class Limits(Protocol):
    """A call's tool allowance: in this process, or shared between replicas."""

    def used(self, tool: str) -> int: ...

    async def claim(self, tool: str, conflicts: Sequence[str]) -> Claim: ...


class LocalLimits:
    def __init__(self, limits: Mapping[str, int]) -> None:
        self.limits = limits
        self._used: dict[str, int] = {}

    def used(self, tool: str) -> int:
        return self._used.get(tool, 0)

    async def claim(self, tool: str, conflicts: Sequence[str]) -> Claim:
        if any(self._used.get(other) for other in conflicts):
            return "conflict"
        used = self._used.get(tool, 0)
        if used >= self.limits.get(tool, 0):
            return "limit"
        self._used[tool] = used + 1
        return "accepted"


class LocalCall:
    """A call whose media stream this process holds."""

    def __init__(self, registry: InProcessCallRegistry, control: CallControl, limits: Limits) -> None:
        self.control = control
        self.call_sid = control.call_sid
        self.caller = control.caller
        self.limits = limits
        self._registry = registry
        self._waits: set[asyncio.Task[None]] = set()

    @property
    def conversation_id(self) -> str | None:
        return self.control.conversation_id

    @property
    def ended(self) -> bool:
        return self.control.ended.is_set()

    @property
    def returned(self) -> Returned | None:
        return self.control.returned

    @property
    def outbound(self) -> Outbound | None:
        return self.control.outbound

    def line(self) -> Line:
        return Line(self.control.audio_progress)

    def used(self, tool: str) -> int:
        return self.limits.used(tool)

    async def claim(self, tool: str, conflicts: Sequence[str] = ()) -> Claim:
        if self.ended:
            return "limit"
        return await self.limits.claim(tool, conflicts)

    def after_line(self, action: CallAction, line: Line | None) -> None:
        if self.ended:
            return
        name = f"{action.kind}-{self.call_sid}"
        task = asyncio.get_running_loop().create_task(self._after(line, action), name=name)
        self._waits.add(task)
        task.add_done_callback(self._waits.discard)

    def end(self, reason: EndReason = EndReason.REQUESTED) -> None:
        self.control.end(reason)

    async def _after(self, line: Line | None, action: CallAction) -> None:
        if line is not None:
            heard = await self._heard(line)
            if self.ended:
                return
            if not heard:
                log.info("acting without confirmation that the line was heard", extra={"call_sid": self.call_sid})
        executor = self._registry.executor
        if executor is None:
            log.error("no executor for call actions; %s dropped", action.kind, extra={"call_sid": self.call_sid})
            return
        # From here the action belongs to the registry: the call ending (which a transfer causes)
        # must not cut a REST request in half.
        self._registry.run_action(executor(self, action), f"action-{self.call_sid}")

    async def _heard(self, line: Line) -> bool:
        timings = self._registry.timings
        control = self.control
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timings.turn_timeout):
                await line.spoken.wait()
        since = line.since if line.since is not None else control.progress_at(line.at)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timings.line_start_timeout):
                # Polled: the bridge's per-chunk path stays free of wake-ups, and this runs only
                # while an action waits.
                while control.audio_progress <= since and not self.ended:  # noqa: ASYNC110
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

    def __init__(self, limits: Mapping[str, int] | None = None, timings: ActionTimings | None = None) -> None:
        self.limits: dict[str, int] = dict(limits or {})  # per tool; the tools install theirs
        self.timings = timings or ActionTimings()
        self.executor: Executor | None = None
        self._by_sid: dict[str, LocalCall] = {}
        self._by_conversation: dict[str, LocalCall] = {}
        self._waiters: dict[str, list[asyncio.Future[LocalCall]]] = {}
        self._actions: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._by_sid)

    @property
    def calls(self) -> list[LocalCall]:
        return list(self._by_sid.values())

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
    ) -> LiveCall | None:
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

    def limits_for(self, call_sid: str) -> Limits:
        """A new call's allowance (the shared registry keeps it in Redis instead)."""
        return LocalLimits(self.limits)

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
        live = LocalCall(self, call, self.limits_for(call.call_sid))
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
