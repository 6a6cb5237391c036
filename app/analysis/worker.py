"""The analyst of one replica: takes each ended call's analysis from the records store once it is due
(the same grace after the call's end as `call.ended`, so late turns count), makes it, by the model
when one is configured or by rules, and keeps it with `call.analyzed` in the outbox.

Off the call's path: it runs beside the calls and never waits on them, nor they on it. Among several
replicas each analysis is taken by one of them at a time (a lease in the records store), and a done
one is never taken again. An analysis that fails is tried again later, up to `attempts` tries in
all, then marked failed; a model whose JSON does not fit twice in one try is marked failed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from app.analysis.fields import FieldSpec, load_fields
from app.analysis.model import AnalysisFailed, model_analysis
from app.analysis.rules import NOTHING_SAID, rules_analysis
from app.brain.llm import LLM
from app.observability import Metrics, one_line
from app.records.analyses import Analysis, Leased, finish, give_back, lease_next
from app.records.outbox import Outbox
from app.records.queries import CallDetail, get_call
from app.settings import Settings

log = logging.getLogger("switchboard.analysis")


@dataclass(frozen=True)
class AnalysisTimings:
    bound: float = 120.0  # one analysis, all its requests
    lease: float = 180.0  # outlasts the bound, so no other replica takes an analysis while it is made
    poll: float = 2.0  # how soon a call ended on another replica is noticed
    attempts: int = 3  # tries in all
    first_retry: float = 30.0  # doubling between tries
    store_timeout: float = 10.0


class Analyst:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        engine: AsyncEngine,
        outbox: Outbox,
        ready: asyncio.Event,
        llm: LLM,
        timings: AnalysisTimings | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine = engine
        self.outbox = outbox
        self.ready = ready
        self.llm = llm
        self.timings = timings or AnalysisTimings()
        self.intents: Sequence[str] = settings.analysis_intents
        self.fields: Sequence[FieldSpec] = load_fields(settings.analysis_file) if settings.analysis_file else ()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if not self.settings.record_calls:
            return  # no call records: nothing to analyse
        how = "with the model" if self.llm.enabled else "by rules (no model configured)"
        log.info("calls are analysed %s: %d intents, %d fields", how, len(self.intents), len(self.fields))
        self._task = asyncio.get_running_loop().create_task(self._run(), name="call-analyst")

    async def stop(self) -> None:
        """Stop at once: an analysis under way is taken again once its lease lapses."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        await self.ready.wait()
        delay = self.timings.poll
        while True:
            now = datetime.now(UTC)
            try:
                async with asyncio.timeout(self.timings.store_timeout), self.engine.begin() as conn:
                    row, due = await lease_next(conn, now, timedelta(seconds=self.timings.lease))
                delay = self.timings.poll
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is away: try again later, never give up
                log.warning("analyses stalled, retrying in %.0f s: %s", delay, one_line(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.timings.poll * 30)
                continue
            if row is not None:
                await self._analyse(row)
                continue
            wait = self.timings.poll if due is None else min(self.timings.poll, (due - now).total_seconds())
            if wait > 0:
                await asyncio.sleep(wait)

    async def _analyse(self, row: Leased) -> None:
        method = "model" if self.llm.enabled else "rules"
        extra = {"call_sid": row.call_sid}
        try:
            async with asyncio.timeout(self.timings.bound):
                async with self.engine.connect() as conn:
                    detail = await get_call(conn, row.call_sid)
                if detail is None:
                    raise AnalysisFailed("the call is no longer in the records", final=True)
                analysis = await self._make(detail)
                method = analysis.method
                async with self.engine.begin() as conn:
                    event = self._event(detail, analysis)
                    kept = await finish(conn, row, analysis, datetime.now(UTC), self.outbox, event)
            self.outbox.committed()
        except AnalysisFailed as exc:
            await self._failed(row, method, exc.reason, exc.final)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a store or time-out: tried again later
            await self._failed(row, method, f"{type(exc).__name__}: {one_line(exc)}", final=False)
            return
        if kept:
            self.metrics.analyses.labels(method, "done").inc()
            log.info("call analysed: %s, %s", analysis.intent, analysis.need_met, extra=extra)
        else:
            log.warning("call analysed, but another replica had taken it over: not kept", extra=extra)

    async def _make(self, detail: CallDetail) -> Analysis:
        if not self.llm.enabled:
            return rules_analysis(detail, self.intents, self.fields)
        if not any(turn.caller_text.strip() for turn in detail.turns):
            return rules_analysis(detail, self.intents, self.fields, NOTHING_SAID)  # nothing for a model
        return await model_analysis(self.llm, self.settings.company_name, detail, self.intents, self.fields)

    def _event(self, detail: CallDetail, analysis: Analysis) -> dict[str, object]:
        call = detail.call
        return {
            "call_sid": call.call_sid,
            "caller": call.caller,
            "ended_at": call.ended_at.isoformat(timespec="seconds") if call.ended_at else None,
            **analysis.to_json(),
            "review_url": self.outbox.link(f"/admin/calls/{call.call_sid}"),
        }

    async def _failed(self, row: Leased, method: str, reason: str, final: bool) -> None:
        tries = row.attempts + 1
        last = final or tries >= self.timings.attempts
        now = datetime.now(UTC)
        retry_at = None if last else now + timedelta(seconds=self.timings.first_retry * 2 ** (tries - 1))
        extra = {"call_sid": row.call_sid}
        try:
            async with asyncio.timeout(self.timings.store_timeout), self.engine.begin() as conn:
                await give_back(conn, row, now, reason, retry_at)
        except Exception as exc:  # its lease lapses and it is taken again
            log.warning("analysis failure not recorded: %s", one_line(exc), extra=extra)
            return
        self.metrics.analyses.labels(method, "failed" if last else "retried").inc()
        if last:
            log.warning("call analysis failed after %d %s: %s", tries, "try" if tries == 1 else "tries", reason,
                        extra=extra)  # fmt: skip
        else:
            log.info("call analysis failed (%s); next try in %.0f s", reason, (retry_at - now).total_seconds(),
                     extra=extra)  # fmt: skip
