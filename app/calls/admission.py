"""Admission control: at most MAX_CONCURRENT_CALLS calls at once.

The webhook reserves a slot, the media stream claims it, the call's end releases it; a reservation
no stream claims lapses with the call token (TTL_S). A call coming back to the agent after a
transfer reserves again for its new stream (while its old stream is still live, whatever the count:
it keeps its place). This is the count of one process; with several
replicas `app.calls.shared.SharedSlots` keeps it in Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from app.telephony.call_token import TTL_S


class Admission(Protocol):
    async def reserve(self, call_sid: str) -> bool:
        """Hold a slot for a ringing call; False when every slot is taken."""

    async def claim(self, call_sid: str) -> bool:
        """Turn a reservation into a live call. False for a second stream of a live call, or when
        full and this call was never reserved."""

    async def release(self, call_sid: str) -> None: ...


class CallSlots:
    """The slots of one process."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._reserved: dict[str, float] = {}
        self._live: set[str] = set()

    @property
    def live(self) -> int:
        return len(self._live)

    def _purge(self) -> None:
        now = self._clock()
        for sid in [sid for sid, deadline in self._reserved.items() if deadline < now]:
            del self._reserved[sid]

    async def reserve(self, call_sid: str) -> bool:
        self._purge()
        if call_sid in self._reserved:
            return True
        if call_sid not in self._live and len(self._reserved) + len(self._live) >= self.limit:
            return False
        self._reserved[call_sid] = self._clock() + TTL_S
        return True

    async def claim(self, call_sid: str) -> bool:
        self._purge()
        if call_sid in self._live:
            return False
        if self._reserved.pop(call_sid, None) is None and len(self._reserved) + len(self._live) >= self.limit:
            return False
        self._live.add(call_sid)
        return True

    async def release(self, call_sid: str) -> None:
        self._live.discard(call_sid)
