"""The one poll-until helper, for states only a poll can see (a row in a store, a metric, another
process's readiness). Wherever an event proves the state (an ack, a mark, a request), wait for that."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

EVERY_S = 0.02


async def until(
    check: Callable[[], T | Awaitable[T]], *, timeout: float = 20.0, what: str = "the condition", every: float = EVERY_S
) -> T:
    """Call `check` (sync or async) until it returns something true, and return that."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result: Any = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return result
                await asyncio.sleep(every)
    except TimeoutError:
        raise TimeoutError(f"{what}: not within {timeout:g} s") from None
