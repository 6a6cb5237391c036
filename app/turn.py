"""One turn of the brain: transcript in, spoken text out, never silence.

The steps (sanitise → retrieve → answer) live in their own modules; this one orders them, keeps
the turn's record and decides what the caller hears when a step fails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .llm import LLM, LLMError
from .observability import Metrics
from .prompt import Prompt

log = logging.getLogger("switchboard.turn")

APOLOGY = "Sorry, I'm having trouble answering right now. Could you say that again in a moment?"
APOLOGY_MID_ANSWER = " Sorry, I lost my train of thought there. Could you ask me that again?"


@dataclass
class TurnRecord:
    """What one turn did, written once as a log line and into the metrics."""

    conversation_id: str | None
    event_id: int | None
    started: float = field(default_factory=time.perf_counter)
    timing: dict[str, float] = field(default_factory=dict)
    outcome: str = "answered"
    fallback: str | None = None
    chunks: int = 0

    def first_chunk(self) -> None:
        if self.chunks == 0:
            self.timing["first_chunk_s"] = time.perf_counter() - self.started
        self.chunks += 1

    def finish(self, metrics: Metrics) -> None:
        self.timing["total_s"] = time.perf_counter() - self.started
        metrics.turns.labels(self.outcome).inc()
        if "first_chunk_s" in self.timing:
            metrics.turn_first_chunk.observe(self.timing["first_chunk_s"])
        if "llm_first_token_s" in self.timing:
            metrics.llm_first_token.observe(self.timing["llm_first_token_s"])
        if self.outcome != "interrupted":
            metrics.turn_total.observe(self.timing["total_s"])
        log.info(
            "turn %s",
            self.outcome,
            extra={
                "conversation_id": self.conversation_id,
                "event_id": self.event_id,
                "fallback": self.fallback,
                "chunks": self.chunks,
                **{f"{k.removesuffix('_s')}_ms": round(v * 1000, 1) for k, v in self.timing.items()},
            },
        )


class TurnPipeline:
    def __init__(self, llm: LLM, prompt: Prompt) -> None:
        self.llm = llm
        self.prompt = prompt

    async def answer(self, transcript: Sequence[Any], record: TurnRecord) -> AsyncIterator[str]:
        """Yield the spoken answer. Whatever fails, the caller hears something."""
        messages = self.prompt.messages(transcript)
        try:
            async for text in self.llm.stream_text(messages, record.timing):
                record.first_chunk()
                yield text
        except LLMError as exc:
            log.warning("model failed: %s", exc.reason)
            yield self._apologise(record, exc.reason, exc.spoke)
        except Exception:
            log.exception("turn failed")
            yield self._apologise(record, "internal error", record.chunks > 0)

    @staticmethod
    def _apologise(record: TurnRecord, reason: str, spoke: bool) -> str:
        record.outcome = "apology"
        record.fallback = reason
        record.first_chunk()
        return APOLOGY_MID_ANSWER if spoke else APOLOGY
