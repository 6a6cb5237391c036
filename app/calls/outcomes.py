"""How each call's media stream ended, kept for the Connect action Twilio posts afterwards (which
decides between hanging up and apologising). In this process; `app.calls.shared.SharedOutcomes`
also keeps it in Redis, since the Connect action may reach another replica."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from app.calls.control import EndReason

OUTCOME_TTL_S = 600.0


class Outcomes(Protocol):
    async def record(self, call_sid: str, reason: EndReason) -> None: ...

    async def get(self, call_sid: str) -> EndReason | None: ...


class StreamOutcomes:
    def __init__(
        self, ttl_s: float = OUTCOME_TTL_S, capacity: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl_s
        self._capacity = capacity
        self._clock = clock
        self._ended: OrderedDict[str, tuple[EndReason, float]] = OrderedDict()

    async def record(self, call_sid: str, reason: EndReason) -> None:
        self._ended[call_sid] = (reason, self._clock() + self._ttl)
        self._ended.move_to_end(call_sid)
        while len(self._ended) > self._capacity:
            self._ended.popitem(last=False)

    async def get(self, call_sid: str) -> EndReason | None:
        now = self._clock()
        while self._ended:
            oldest, (_, deadline) = next(iter(self._ended.items()))
            if deadline >= now:
                break
            del self._ended[oldest]
        entry = self._ended.get(call_sid)
        return entry[0] if entry is not None else None
