"""The holding line: "One moment." when a turn is slow to find its first words.

ElevenLabs' Speech Engine waits CASCADE_TIMEOUT_SECONDS for the brain's response to a turn, then
abandons the turn and sends it again. A turn whose model asks for a tool and then answers in a
second round (each round allowed LLM_FIRST_TOKEN_TIMEOUT for its first token), or whose tool or
model is slow, can pass that before it has said a word. So when nothing has been spoken by the
hold deadline, a short line goes out first and the answer follows it; a turn that speaks sooner
hears no filler.

The deadline is a quarter of the engine's timeout, and never more than two seconds: three
quarters of the timeout stay for the line to reach the engine over a slow network or a busy
event loop, and on a phone two seconds of silence already sounds like a dropped call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

# Ends a line so that whatever the answer starts with (a heading, a list) is read as a line start.
HOLD_LINE = "One moment.\n"
HOLD_SHARE = 0.25
MAX_HOLD_S = 2.0


def hold_after(cascade_timeout_s: float) -> float:
    """Seconds into a turn after which, if nothing has been spoken, the holding line goes out."""
    return min(cascade_timeout_s * HOLD_SHARE, MAX_HOLD_S)


async def holding(
    source: AsyncGenerator[str, None], deadline: float, spoken: Callable[[], bool]
) -> AsyncIterator[str | None]:
    """`source`'s pieces, with one None (say the holding line) if nothing is `spoken()` by `deadline`
    (a `time.perf_counter()` value).

    Until the first words, each piece is awaited in a task of its own so the deadline can pass while
    the source works on (a tool, a model round); the source is not interrupted by the holding line.
    """
    step: asyncio.Future[str] | None = None
    try:
        held = False
        while not held and not spoken():
            step = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({step}, timeout=max(0.0, deadline - time.perf_counter()))
            if not done:
                held = True
                yield None
            try:
                piece = await step
            except StopAsyncIteration:
                return
            step = None
            yield piece
        async for piece in source:
            yield piece
    finally:
        if step is not None and not step.done():
            step.cancel()
            await asyncio.wait({step})
        await source.aclose()
