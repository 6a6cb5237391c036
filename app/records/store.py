"""The records store of one running app: where calls, turns, gaps and messages are kept.

Opened in the background at start: a store that is unreachable then (or later) never holds up a
call. Records wait in the recorder's buffer until the schema is in place; messages are refused
(the agent says so) until it is. The server deletes what is past RECORDS_RETENTION_DAYS, daily.

As a `CallObserver` it records each call's answer and end (a stream left for a transfer is not the
call's end); the webhook, the tools, the brain and a transfer's routes hand it the rest through
`record`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime

from app.callbacks.store import CallbackStore
from app.calls.control import CallControl, EndReason
from app.observability import Metrics, one_line
from app.records.database import bring_up_to_date, create_engine
from app.records.events import CallAnswered, CallEnded, RecordEvent
from app.records.gaps import Encode, GapGrouper
from app.records.messages import MessageStore
from app.records.outbox import Outbox, destinations
from app.records.recorder import Recorder
from app.records.retention import EVERY_S, purge
from app.settings import Settings

log = logging.getLogger("switchboard.records")

OPEN_RETRY_MAX_S = 30.0


def end_reason(reason: EndReason) -> str:
    """How a call ended, as the records say it: the bridge's failures are all the fallback path."""
    if reason is EndReason.CALLER_HUNG_UP:
        return "caller_hung_up"
    if reason in (EndReason.AGENT_ENDED, EndReason.REQUESTED):
        return "agent_ended"
    if reason is EndReason.MAX_DURATION:
        return "max_duration"
    if reason is EndReason.DRAINED:
        return "drained"
    return "fallback"


class RecordsStore:
    def __init__(self, settings: Settings, metrics: Metrics, encode: Encode | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine = create_engine(settings)
        self.outbox = Outbox(destinations(settings), settings.public_url)
        self.messages = MessageStore(self.engine, self.outbox, settings.record_calls)
        self.callbacks = CallbackStore(self.engine)
        self.ready = asyncio.Event()  # the schema is in place
        self.recorder: Recorder | None = None
        if settings.record_calls:
            grouper = GapGrouper(encode) if encode is not None else None
            self.recorder = Recorder(self.engine, metrics, grouper, self.outbox, ready=self.ready)
            metrics.records_pending.set_function(lambda: self.recorder.pending if self.recorder else 0)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def gaps(self) -> bool:
        """Unanswered questions are grouped into gaps (recording is on, with an encoder)."""
        return self.recorder is not None and self.recorder.gaps is not None

    @property
    def recording(self) -> bool:
        return self.recorder is not None

    def record(self, event: RecordEvent) -> None:
        if self.recorder is not None:
            self.recorder.add(event)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._open(), name="records-open"))
        self._tasks.append(loop.create_task(self._retention(), name="records-retention"))
        if self.recorder is not None:
            self.recorder.start()

    async def stop(self) -> None:
        if self.recorder is not None:
            await self.recorder.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.engine.dispose()

    async def _open(self) -> None:
        delay = 1.0
        while True:
            try:
                await bring_up_to_date(self.engine, self.settings.data_dir)
            except Exception as exc:
                log.warning("records store unreachable, retrying in %.0f s: %s", delay, one_line(exc))
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, OPEN_RETRY_MAX_S)
                continue
            self.ready.set()
            return

    async def _retention(self) -> None:
        await self.ready.wait()
        days = self.settings.records_retention_days
        while True:
            try:
                gone = await purge(self.engine, days, datetime.now(UTC))
                if any(gone.values()):
                    log.info("records older than %d days deleted: %s", days, gone)
            except Exception as exc:
                log.warning("records retention failed (next try in a day): %s", one_line(exc))
            await asyncio.sleep(EVERY_S)

    # --- CallObserver -----------------------------------------------------------------------

    async def call_started(self, call: CallControl) -> None:
        self.record(CallAnswered(call.call_sid, call.conversation_id, datetime.now(UTC), call.greeting))

    async def call_ended(self, call: CallControl) -> None:
        reason = call.end_reason or EndReason.INTERNAL_ERROR
        if reason is EndReason.TRANSFERRED:
            return  # the call left this stream for a transfer: the transfer's result ends it, or a new stream
        now = datetime.now(UTC)
        self.record(
            CallEnded(call.call_sid, end_reason(reason), reason.value, now, (now - call.started_at).total_seconds())
        )

    def dtmf(self, call: CallControl, digit: str) -> None:
        """Keys are not recorded."""


async def open_for_reading(settings: Settings) -> RecordsStore:
    """A store for a command-line reader: the schema brought up to date, nothing recorded."""
    store = RecordsStore(settings.model_copy(update={"record_calls": False}), Metrics())
    await bring_up_to_date(store.engine, settings.data_dir)
    store.ready.set()
    return store
