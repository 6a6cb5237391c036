"""A run: the scenarios placed as calls into one switchboard, N at a time, each checked as it ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.settings import Settings
from app.testing.scenarios.checks import ScenarioResult, check
from app.testing.scenarios.files import Scenario
from app.testing.scenarios.judge import Judge
from app.testing.scenarios.noise import AsrNoise
from app.testing.scenarios.runner import switchboard


@dataclass
class Run:
    results: list[ScenarioResult]
    seconds: float  # the whole run, the switchboard's start-up included
    answers_from: str
    jobs: int
    noise: AsrNoise | None

    @property
    def ok(self) -> bool:
        """Nothing failed (an expected failure is not one)."""
        return not any(result.status in ("failed", "error") for result in self.results)


async def run(
    settings: Settings,
    scenarios: list[Scenario],
    *,
    jobs: int = 1,
    noise: AsrNoise | None = None,
    timing: bool = True,
    on_result: Callable[[ScenarioResult], None] | None = None,
) -> Run:
    started = time.perf_counter()
    gate = asyncio.Semaphore(jobs)
    judge = Judge(settings)
    try:
        async with switchboard(settings, jobs) as calls:

            async def one(scenario: Scenario) -> ScenarioResult:
                async with gate:
                    result = check(scenario, await calls.place(scenario, noise), calls.services.directory, timing)
                    await judge.score(result)
                if on_result is not None:
                    on_result(result)
                return result

            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(s), name=f"scenario-{n}") for n, s in enumerate(scenarios, 1)]
    finally:
        await judge.aclose()
    answers_from = f"the model {settings.openai_model}" if settings.llm_enabled else "the documents alone"
    return Run([task.result() for task in tasks], time.perf_counter() - started, answers_from, jobs, noise)
