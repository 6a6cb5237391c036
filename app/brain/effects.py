"""What a turn's tools did, remembered so that a turn sent again never acts twice.

ElevenLabs' Speech Engine abandons a turn the brain has not answered within its cascade timeout
and sends it again: the same caller words at the same place in the call, with the same event id
or a new one (a new one cancels the attempt in flight, whatever it was doing). The model, or the
documents-only rules, then ask for the same tools again.

So a tool call that passed validation acts once per turn. It runs as a task of its own, which
cancelling the attempt does not stop, remembered under the turn (the caller's turn number and
words) and its place among the turn's calls of that tool. A later attempt at the same turn that
asks for the tool again gets the remembered outcome, waiting for it if the first attempt's call is
still under way; only an outcome that was not accepted (refused, failed) is tried again. The tools
a turn is offered are remembered with it, so a retry may ask for what the first attempt used up.
Every tool run through `CallTools.run` gets this. Only the latest turn is remembered: a retry is
always of the latest turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger("switchboard.tools")

TurnKey = tuple[int, str]  # the caller's turn number in the call, and their words


class Result(Protocol):
    @property
    def accepted(self) -> bool: ...


R = TypeVar("R", bound=Result)


class TurnEffects(Generic[R]):
    """One conversation's memory of the latest turn's tool effects."""

    def __init__(self) -> None:
        self.offered: tuple[str, ...] | None = None  # the tools the turn's first attempt was offered
        self._turn: TurnKey | None = None
        self._effects: dict[tuple[str, int], asyncio.Task[R]] = {}
        self._asked: Counter[str] = Counter()  # this attempt's calls, by tool
        self._running: set[asyncio.Task[R]] = set()

    def begin(self, turn: TurnKey) -> None:
        """An attempt at `turn` starts; another turn than the last forgets the last one's effects."""
        self._asked.clear()
        if turn != self._turn:
            self._turn, self.offered, self._effects = turn, None, {}

    async def once(self, tool: str, act: Callable[[], Coroutine[Any, Any, R]]) -> tuple[R, bool]:
        """This attempt's next call of `tool`: (the earlier outcome, True) when an earlier attempt's
        accepted call stands for it, else (what `act()` came to, False)."""
        key = (tool, self._asked[tool])
        self._asked[tool] += 1
        earlier = self._effects.get(key)
        if earlier is not None:
            await asyncio.wait({earlier})  # not cancelled if this attempt is
            if not earlier.cancelled() and earlier.exception() is None and earlier.result().accepted:
                return earlier.result(), True
        task = asyncio.get_running_loop().create_task(act(), name=f"tool-{tool}")
        self._effects[key] = task
        self._running.add(task)
        task.add_done_callback(self._settled)
        await asyncio.wait({task})
        return task.result(), False

    def _settled(self, task: asyncio.Task[R]) -> None:
        self._running.discard(task)
        # Said here as well as to the attempt awaiting it: a cancelled attempt has no one to tell.
        if not task.cancelled() and task.exception() is not None:
            log.warning("tool %s failed: %r", task.get_name(), task.exception())

    async def close(self, timeout: float) -> None:
        """The conversation is over: effects under way finish (each is bounded on its own), or are cancelled."""
        if not self._running:
            return
        _, pending = await asyncio.wait(set(self._running), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
