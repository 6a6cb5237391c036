"""A call as the in-process tests play it: the bridge's side of a CallControl, and an executor that
records the actions the registry carries out."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from app.calls.control import CallControl
from app.calls.registry import ActionTimings, CallAction

FAST = ActionTimings(
    turn_timeout=5, line_start_timeout=5, settle=0.01, heard_timeout=5, audio_poll=0.005, close_timeout=5
)
SID = "CA" + "1" * 32
OTHER_SID = "CA" + "2" * 32
CALLER = "+14155550100"


def after_now() -> float:
    """Now, by the wall clock, once the wall clock has moved past it: audio sent from here on is
    stamped later (a line started on another replica is placed by time.time())."""
    now = time.time()
    while time.time() <= now:  # microseconds
        pass
    return now


def sid(n: int) -> str:
    """The n-th of many call SIDs."""
    return f"CA{n:032x}"


class Stream:
    """The bridge's side of a CallControl: agent audio out, marks out, Twilio's echoes in."""

    def __init__(self, call_sid: str = SID, conversation_id: str | None = "conv_1") -> None:
        self.marks: list[str] = []
        self.control = CallControl(call_sid, "MZ" + "0" * 32, CALLER, self._send_mark)
        self.control.conversation_id = conversation_id

    async def _send_mark(self, name: str) -> bool:
        self.marks.append(name)
        return True

    def play(self, event_id: int = 1) -> str:
        """Agent audio goes out and the bridge marks it; returns the mark Twilio will echo."""
        self.control.audio_sent()
        return self.control.audio_mark(event_id)


class Actions:
    """The registry's executor: records what it was asked to do, and can be held up."""

    def __init__(self) -> None:
        self.done: list[tuple[str, str]] = []
        self.started = asyncio.Event()
        self.acted = asyncio.Event()
        self.release: asyncio.Event | None = None

    async def __call__(self, call: Any, action: CallAction) -> None:
        self.started.set()
        if self.release is not None:
            await self.release.wait()
        self.done.append((call.call_sid, action.kind))
        self.acted.set()

    async def wait(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.done) < count:
                self.acted.clear()
                await self.acted.wait()
