"""One turn of the brain: transcript in, spoken text out, never silence.

sanitise → build the query → retrieve → answer (model, or the documents alone). The steps live
in their own modules; this one orders them, keeps the turn's record and decides what the caller
hears when a step fails.

With tools, a model round that ends in tool calls is followed by another round that sees their
results (at most MAX_TOOL_ROUNDS such rounds per turn); text from every round streams straight
through. The tools themselves are gated in `tools`, and a turn the Speech Engine sends again (it
gave up waiting) gets the effects its first attempt had (`effects`). A turn slow to start says the
holding line first (`holding`). What the caller lookup answered is fetched while retrieval runs and
given to the model as data (`prompt`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.brain.documents_only import NO_PAYMENTS, PAYMENT_QUESTION, DocumentsOnly, payment_request
from app.brain.holding import HOLD_LINE, hold_after, holding
from app.brain.llm import LLM, LLMError, ToolCall
from app.brain.prompt import Prompt
from app.brain.query import retrieval_query
from app.brain.sanitise import HOSTILE_FLAGS, SanitisedTranscript, sanitise_transcript
from app.brain.small_talk import small_talk
from app.brain.speech_filter import SpeechFilter
from app.brain.spoken_fallback import CANNOT_LOOK_UP, NO_ANSWER, extractive_answer
from app.brain.tools import ACTED, BY_NAME, CallTools
from app.calls.caller_context import CallerContext
from app.calls.caller_lookup import ConversationCaller
from app.knowledge.retrieval import Passage, Retrieval, Retriever
from app.observability import Metrics
from app.records.events import TurnDone
from app.settings import Settings

log = logging.getLogger("switchboard.turn")

APOLOGY_MID_ANSWER = " Sorry, I lost my train of thought there. Could you ask me that again?"
COALESCE_CHARS = 24
_BOUNDARY = frozenset(" \n.,;:!?")
DID_NOT_CATCH = "Sorry, I didn't catch that. Could you say it again?"
CANNOT_DO = "Sorry, I can't do that. Is there anything else I can help you with?"
DONE = "All done. Is there anything else I can help you with?"
MAX_TOOL_ROUNDS = 2


@dataclass
class TurnRecord:
    """What one turn did: a log line, the metrics, and the turn's record in the call history."""

    conversation_id: str | None
    event_id: int | None
    call_sid: str | None = None
    started: float = field(default_factory=time.perf_counter)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    timing: dict[str, float] = field(default_factory=dict)
    outcome: str = "answered"
    fallback: str | None = None
    held: bool = False  # the holding line went out before the answer
    flags: frozenset[str] = frozenset()
    follow_up: bool = False
    abstained: bool | None = None
    passages: tuple[Passage, ...] = ()
    tools: list[dict[str, str]] = field(default_factory=list)
    utterance: str = ""  # what the caller said, sanitised
    said: list[str] = field(default_factory=list)  # what went out to be spoken
    unanswered: str | None = None  # the question the documents did not answer

    @property
    def chunks(self) -> int:
        return len(self.said)

    def sent(self, text: str) -> None:
        if not self.said:
            self.timing["first_chunk_s"] = time.perf_counter() - self.started
        self.said.append(text)

    def timings_ms(self) -> dict[str, float]:
        return {k.removesuffix("_s"): round(v * 1000, 1) for k, v in self.timing.items()}

    def retrieved(self, retrieval: Retrieval) -> None:
        self.timing["retrieval_s"] = retrieval.seconds
        self.abstained = retrieval.abstain
        self.passages = retrieval.passages

    def tool(self, name: str, decision: str) -> None:
        self.tools.append({"tool": name[:64], "decision": decision})

    def event(self) -> TurnDone:
        """The turn as the call history keeps it."""
        return TurnDone(
            call_sid=self.call_sid,
            conversation_id=self.conversation_id,
            event_id=self.event_id,
            started_at=self.started_at,
            caller_text=self.utterance,
            agent_text="".join(self.said),
            interrupted=self.outcome == "interrupted",
            outcome=self.outcome,
            abstained=self.abstained,
            fallback=self.fallback,
            tools=self.tools,
            timings_ms=self.timings_ms(),
            sources=self.passages,
            unanswered=self.unanswered,
        )

    def finish(self, metrics: Metrics) -> None:
        self.timing["total_s"] = time.perf_counter() - self.started
        metrics.turns.labels(self.outcome).inc()
        if self.held:
            metrics.turns_held.inc()
        for flag in self.flags:
            metrics.sanitiser_flags.labels(flag).inc()
        if self.abstained is not None:
            metrics.abstentions.labels(str(self.abstained).lower()).inc()
        if self.fallback is not None:
            metrics.fallbacks.labels(self.fallback).inc()
        for key, histogram in (
            ("first_chunk_s", metrics.turn_first_chunk),
            ("llm_first_token_s", metrics.llm_first_token),
            ("retrieval_s", metrics.retrieval),
        ):
            if key in self.timing:
                histogram.observe(self.timing[key])
        if self.outcome != "interrupted":
            metrics.turn_total.observe(self.timing["total_s"])
        log.info(
            "turn %s",
            self.outcome,
            extra={
                "conversation_id": self.conversation_id,
                "event_id": self.event_id,
                "flags": sorted(self.flags) or None,
                "follow_up": self.follow_up or None,
                "held": self.held or None,
                "abstained": self.abstained,
                "sources": [f"{p.source}:{p.similarity:.2f}" for p in self.passages[:3]] or None,
                "tools": [f"{t['tool']}:{t['decision']}" for t in self.tools] or None,
                "fallback": self.fallback,
                "chunks": self.chunks,
                **{f"{k}_ms": ms for k, ms in self.timings_ms().items()},
            },
        )


class TurnPipeline:
    def __init__(self, settings: Settings, llm: LLM, prompt: Prompt, retriever: Retriever | None) -> None:
        self.settings = settings
        self.llm = llm
        self.prompt = prompt
        self.retriever = retriever
        self.documents_only = DocumentsOnly(settings, prompt.directory)
        self.hold_after = hold_after(settings.cascade_timeout_seconds)

    async def answer(
        self,
        transcript: Sequence[Any],
        record: TurnRecord,
        tools: CallTools | None = None,
        caller: ConversationCaller | None = None,
    ) -> AsyncIterator[str]:
        """Yield the spoken answer. Whatever fails, the caller hears something.

        Every piece passes the turn's speech filter, the holding line too. The first piece goes out
        the moment the filter lets it; after that, model tokens are gathered into pieces of a few
        words ending at a word boundary, which is all text-to-speech needs and a fraction of the
        messages (each one costs a WebSocket frame on a shared event loop).
        """
        pending = ""
        spoken = SpeechFilter()
        pieces = holding(
            self._answer(transcript, record, tools, caller),
            record.started + self.hold_after,
            lambda: record.chunks > 0,
        )
        try:
            async for raw in pieces:
                if raw is None:
                    record.held, raw = True, HOLD_LINE
                text = spoken.feed(raw)
                if not text:
                    continue
                if record.chunks == 0:
                    record.sent(text)
                    yield text
                    continue
                if len(pending) >= COALESCE_CHARS and (pending[-1] in _BOUNDARY or text[:1] in _BOUNDARY):
                    record.sent(pending)
                    yield pending
                    pending = ""
                pending += text
            pending += spoken.flush()
            if record.chunks == 0 and not pending.strip():
                pending = APOLOGY_MID_ANSWER.lstrip()  # the answer was nothing but markup
            if pending:
                record.sent(pending)
                yield pending
        except Exception:
            log.exception("turn failed")
            record.outcome, record.fallback = "apology", "internal error"
            apology = APOLOGY_MID_ANSWER if record.chunks > 0 or pending else CANNOT_LOOK_UP
            text = pending + spoken.feed(apology) + spoken.flush()
            record.sent(text)
            yield text
        finally:
            await pieces.aclose()
            if tools is not None:
                tools.end_turn()

    async def _answer(
        self,
        transcript: Sequence[Any],
        record: TurnRecord,
        tools: CallTools | None,
        caller: ConversationCaller | None,
    ) -> AsyncIterator[str]:
        clean = sanitise_transcript(
            transcript,
            max_utterance_chars=self.settings.max_utterance_chars,
            max_history_chars=self.settings.max_history_chars,
        )
        record.flags = clean.flags
        record.utterance = clean.utterance
        if clean.flags & HOSTILE_FLAGS:
            log.warning("transcript flagged: %s", ", ".join(sorted(clean.flags & HOSTILE_FLAGS)))
        if not clean.utterance:
            record.outcome = "not_understood"
            yield DID_NOT_CATCH
            return
        query, record.follow_up = retrieval_query(clean)
        turn = (clean.turn, clean.utterance)
        if not self.llm.enabled:
            line = await self.documents_only.act(clean, turn, tools, record.tool)
            if line is not None:
                record.outcome, record.fallback = "documents_only", "no model"
                yield line
                return
        if self.retriever is None or not self.retriever.ready:
            record.outcome, record.fallback = "no_index", "index unavailable"
            yield CANNOT_LOOK_UP
            return
        # Finding the call and its caller's data may ask Redis (shared call state): do it while
        # retrieval runs, not after.
        model = self.llm.enabled
        binding = asyncio.ensure_future(tools.begin_turn(turn)) if tools is not None and model else None
        known = asyncio.ensure_future(caller.context()) if caller is not None and model else None
        try:
            lead = ""
            if not model and payment_request(clean.utterance):
                # How to pay, from the documents, after saying no payment can be taken here.
                query, lead = PAYMENT_QUESTION, NO_PAYMENTS + " "
            retrieval = await self.retriever.retrieve(query)
            record.retrieved(retrieval)
            if not model:
                record.outcome, record.fallback = "documents_only", "no model"
                yield lead + await self._documents_answer(retrieval, query, clean, record)
                return
            if binding is not None:
                await binding
            context = await known if known is not None else None
            async for text in self._model_answer(clean, retrieval, query, record, tools, context):
                yield text
        finally:
            for work in (binding, known):
                if work is not None and not work.cancel() and not work.cancelled():
                    work.exception()  # it had finished: a failure of it is not left unretrieved

    async def _model_answer(
        self,
        clean: SanitisedTranscript,
        retrieval: Retrieval,
        query: str,
        record: TurnRecord,
        tools: CallTools | None,
        caller: CallerContext | None = None,
    ) -> AsyncIterator[str]:
        """Model rounds: text streams out as it comes; tool calls are gated, answered, and the
        model goes again (at most MAX_TOOL_ROUNDS times, the last round without tools). The turn's
        tools were offered by `CallTools.begin_turn`, run while retrieval ran."""
        offered = tools.offered if tools is not None else ()
        specs = tools.box.specs(offered) if tools is not None and offered else None
        returned = tools.call.returned if tools is not None and tools.call is not None else None
        call_sid = tools.known_call_sid if tools is not None else None
        messages = self.prompt.messages(clean, retrieval, offered, returned, call_sid, caller)
        spoke = acted = False
        tail = " "  # the last character spoken so far
        for round_no in range(MAX_TOOL_ROUNDS + 1):
            calls: list[ToolCall] = []
            said: list[str] = []
            last = round_no == MAX_TOOL_ROUNDS
            try:
                async for text in self.llm.stream_text(
                    messages,
                    record.timing,
                    tools=specs,
                    tool_choice="none" if last else None,
                    tool_calls=calls,
                    call_prefix=f"call_{round_no}",
                    allow_empty=round_no > 0,
                ):
                    if not said and not tail.isspace() and not text[:1].isspace():
                        text = " " + text  # a round after a tool goes on from the last: "Sure. I've…"
                    spoke = True
                    said.append(text)
                    tail = text[-1:] or tail
                    yield text
            except LLMError as exc:
                log.warning("model failed: %s", exc.reason)
                record.outcome, record.fallback = "fallback", exc.reason
                line = tools.armed_line if tools is not None else None
                if line is not None:
                    if not spoke:
                        yield line  # a transfer or goodbye is under way: say that, nothing else
                elif spoke or round_no > 0:
                    yield APOLOGY_MID_ANSWER if spoke else APOLOGY_MID_ANSWER.lstrip()
                else:
                    yield await self._documents_answer(retrieval, query, clean, record)
                return
            if not calls:
                break
            if last or tools is None:
                for call in calls:
                    record.tool(call.name, "round_limit")
                    if tools is not None:
                        tools.box.count(call.name, "round_limit")
                break
            results = await tools.run(calls)
            for call, label in zip(calls, tools.labels, strict=True):
                record.tool(call.name, label)
            record.unanswered = tools.unanswered or record.unanswered
            if spoke and not any(BY_NAME[c.name].needs_reply if c.name in BY_NAME else True for c in calls):
                break  # the answer is said; noting a gap needs nothing more from the model
            acted = acted or any(label in ACTED for label in tools.labels)
            messages = [
                *messages,
                {"role": "assistant", "content": "".join(said) or None, "tool_calls": [c.message() for c in calls]},
                *({"role": "tool", "tool_call_id": c.id, "content": r} for c, r in zip(calls, results, strict=True)),
            ]
        if not spoke:
            line = tools.armed_line if tools is not None else None
            yield line or (DONE if acted else CANNOT_DO)

    async def _documents_answer(
        self, retrieval: Retrieval, query: str, clean: SanitisedTranscript, record: TurnRecord
    ) -> str:
        """The answer from the documents alone; saying they hold none is a knowledge gap."""
        assert self.retriever is not None
        answer = await asyncio.to_thread(extractive_answer, retrieval, query, self.retriever.encoder)
        if answer == NO_ANSWER and not small_talk(clean.utterance):
            record.unanswered = clean.utterance
        return answer
