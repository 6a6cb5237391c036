"""The long-lived parts of one running app: opened before serving, closed after."""

from __future__ import annotations

import logging

from quart import current_app

from .llm import LLM
from .observability import Metrics
from .prompt import Prompt
from .settings import Settings
from .turn import TurnPipeline

log = logging.getLogger("switchboard")


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.llm: LLM | None = None
        self.pipeline: TurnPipeline | None = None

    async def start(self) -> None:
        self.llm = LLM(self.settings)
        self.pipeline = TurnPipeline(self.llm, Prompt(self.settings))
        if not self.settings.brain_auth_configured:
            log.warning("brain /ws refuses every connection: set SHARED_SECRET or ELEVENLABS_API_KEY")
        if not self.llm.enabled:
            log.warning("no model configured (OPENAI_MODEL): answers come from the documents alone")

    async def stop(self) -> None:
        if self.llm is not None:
            await self.llm.aclose()

    @property
    def ready(self) -> bool:
        return self.pipeline is not None


def services() -> Services:
    return current_app.extensions["switchboard"]
