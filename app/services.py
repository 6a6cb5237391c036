"""The long-lived parts of one running app: opened before serving, closed after."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from quart import current_app

from app.admin.guard import Logins
from app.analysis.worker import Analyst
from app.brain.llm import LLM
from app.brain.prompt import Prompt
from app.brain.tools import Toolbox
from app.brain.turn import TurnPipeline
from app.calls.caller_lookup import CallerLookups
from app.calls.registry import InProcessCallRegistry
from app.calls.shared import SharedCallRegistry, SharedOutcomes, SharedSlots, SharedState, SharedTransfers
from app.clock import CallClock, Clock
from app.departments.directory import Directory
from app.knowledge.embedding import query_encoder_for
from app.knowledge.retrieval import Retriever
from app.notify.delivery import Delivery, notify_status
from app.observability import Metrics
from app.records.store import RecordsStore
from app.serving.drain import Drain
from app.settings import Settings
from app.telephony.call_actions import CallActions
from app.telephony.state import Telephony

log = logging.getLogger("switchboard")


class Services:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        # The one clock opening hours are read against (tests and scenarios set it).
        self.clock: Clock = clock or CallClock()
        self.directory = Directory(settings, self.clock)
        self.llm: LLM | None = None
        self.pipeline: TurnPipeline | None = None
        self.retriever: Retriever | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self.telephony = Telephony(settings, self.metrics)
        self.shared: SharedState | None = None
        self.registry: InProcessCallRegistry = InProcessCallRegistry()
        if settings.shared_state:
            self._share(settings.secret("redis_url") or "")
        self.call_actions = CallActions(
            settings, self.metrics, self.directory, self.telephony.transfers, self.telephony.calls
        )
        self.toolbox: Toolbox | None = None
        self.analyst: Analyst | None = None
        self.records = RecordsStore(settings, self.metrics, self._embed_question)
        self.delivery = Delivery(settings, self.metrics, self.records.engine, self.records.outbox, self.records.ready)
        self.lookups = CallerLookups(settings, self.metrics, self.records.record, self.shared)
        self.telephony.lookups = self.lookups
        self.telephony.observers += [self.registry, self.records, self.lookups]
        self.drain = Drain(self)
        self.logins = Logins(self.metrics)

    def _share(self, url: str) -> None:
        """Several replicas: admission, the registry, tool limits and outcomes in Redis."""
        settings = self.settings
        self.shared = SharedState(url)
        slots = SharedSlots(self.shared, settings.max_concurrent_calls, settings.call_lease_seconds)
        self.telephony.slots = slots
        self.telephony.outcomes = SharedOutcomes(self.shared)
        self.telephony.transfers = SharedTransfers(self.shared)
        self.registry = SharedCallRegistry(
            self.shared, slots, lease_s=settings.call_lease_seconds, max_call_seconds=settings.max_call_seconds
        )

    async def start(self) -> None:
        # Departments with mistakes refuse the start, every mistake on its own line (DepartmentsError).
        self.directory.load()
        self._watchers.append(asyncio.create_task(self.directory.watch(), name="departments-watcher"))
        if self.shared is not None:
            await self.shared.start()
            assert isinstance(self.registry, SharedCallRegistry)
            await self.registry.start()
            log.info("replica %s: call state shared through Redis", self.shared.replica)
        await self.records.start()
        self.delivery.start()
        for line in notify_status(self.settings):
            log.warning(line)
        self.lookups.start()
        await self.telephony.start()
        await self.call_actions.start()
        self.toolbox = Toolbox(
            self.settings, self.metrics, self.registry, self.call_actions, self.records, self.directory
        )
        self.telephony.observers.append(self.toolbox)
        if not self.call_actions.transfers:
            log.info(
                "transfer_call is off: set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, PUBLIC_URL, and departments "
                "(DEPARTMENTS_FILE or TRANSFER_TARGETS)"
            )
        self.llm = LLM(self.settings)
        records = self.records
        self.analyst = Analyst(self.settings, self.metrics, records.engine, records.outbox, records.ready, self.llm)
        self.analyst.start()
        # Loading the model and the index is blocking work: keep it off the event loop.
        encoder = await asyncio.to_thread(query_encoder_for, self.settings)
        self.retriever = Retriever(self.settings, encoder)
        await asyncio.to_thread(self.retriever.load)
        if not self.retriever.ready:
            log.warning("not ready: %s", self.retriever.error)
        self._watchers.append(asyncio.create_task(self.retriever.watch(), name="index-watcher"))
        self.pipeline = TurnPipeline(self.settings, self.llm, Prompt(self.settings, self.directory), self.retriever)
        if not self.settings.brain_auth_configured:
            log.warning("brain /ws refuses every connection: set SHARED_SECRET or ELEVENLABS_API_KEY")
        if not self.llm.enabled:
            log.warning("no model configured (OPENAI_MODEL): answers come from the documents alone")

    async def stop(self) -> None:
        await self.drain.close()
        await self.registry.close()
        await self.call_actions.aclose()
        await self.telephony.stop()
        await self.lookups.stop()
        if self.analyst is not None:
            await self.analyst.stop()
        await self.delivery.stop()
        await self.records.stop()
        if self.shared is not None:
            await self.shared.close()
        for watcher in self._watchers:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if self.retriever is not None:
            self.retriever.close()
        if self.llm is not None:
            await self.llm.aclose()

    def _embed_question(self, text: str) -> Any:
        """Unanswered questions are grouped by the same embedding retrieval uses (blocking)."""
        assert self.retriever is not None
        return self.retriever.encoder.encode(text)

    @property
    def ready(self) -> bool:
        return self.unready_because is None

    @property
    def unready_because(self) -> str | None:
        """Why this replica should get no new work (None: it should)."""
        if self.drain.draining:
            return "draining: finishing live calls before stopping"
        if self.shared is not None and not self.shared.available:
            return self.shared.error or "Redis unreachable"
        if self.pipeline is None or self.retriever is None or not self.retriever.ready:
            return (self.retriever.error if self.retriever is not None else None) or "starting"
        return None


def services() -> Services:
    return current_app.extensions["switchboard"]
