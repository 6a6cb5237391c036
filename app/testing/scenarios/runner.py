"""Placing each scenario as a whole call, and gathering what happened on it.

One switchboard serves the whole run: the stand-ins for Twilio and ElevenLabs and a server wired to
them (`app.testing.phone.LocalSwitchboard`, what `make call` runs), with the user's own settings
(model, documents, departments, greeting) but records of its own: the run's calls, messages and
gaps go to a throwaway store, and no webhook or e-mail goes to the team. Scenarios are calls into
it, up to N at a time, each with its own call SID, caller and clock.

What the agent said and how fast comes from the engine stand-in, as the caller hears it; where a
transfer went, from the REST update Twilio's stand-in got; tools, sources, gaps and messages, from
the records the server keeps of the call, read once the server has finished with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.calls.control import CallControl
from app.records.queries import CallDetail, get_call
from app.records.schema import messages
from app.settings import Settings
from app.testing.phone import CALLER, CallRecord, LocalSwitchboard, Phone
from app.testing.scenarios.files import Scenario
from app.testing.scenarios.noise import AsrNoise

RECORDS_TIMEOUT_S = 15.0


@dataclass
class TurnSeen:
    """One turn of a call, as the caller heard it and the server recorded it."""

    said: str
    heard: str  # what speech recognition made of it (differs only with --asr-noise)
    agent: str = ""
    first_words_ms: float | None = None  # the caller's words recognised → the agent's first words
    tools: list[dict[str, str]] = field(default_factory=list)  # [{"tool": ..., "decision": ...}]
    sources: list[str] = field(default_factory=list)  # the documents of the passages the answer read
    gap: bool = False  # a knowledge gap was recorded
    messages: list[dict[str, Any]] = field(default_factory=list)  # messages saved in this turn

    def to_json(self) -> dict[str, Any]:
        return {
            "said": self.said,
            "heard": self.heard,
            "agent": self.agent,
            "first_words_ms": self.first_words_ms,
            "tools": self.tools,
            "sources": self.sources,
            "gap": self.gap,
            "messages": self.messages,
        }


@dataclass
class CallSeen:
    call_sid: str
    turns: list[TurnSeen] = field(default_factory=list)  # the turns that happened, in order
    ended_by: str | None = None  # "agent", "caller" or "transfer"
    transfer: dict[str, str] | None = None  # where Twilio was told to send the call
    recorded_end: str | None = None  # how the call ended, as its record says (transferred, agent_ended, …)
    recorded_transfer: str | None = None  # the department the record says the call was handed to
    seconds: float = 0.0
    error: str | None = None  # the call could not be played through

    @property
    def ending(self) -> str:
        if self.transfer is not None:
            return f"transferred to {self.transfer['department'] or 'a colleague'} ({self.transfer['number']})"
        return {"agent": "the agent hung up", "caller": "the caller hung up"}.get(self.ended_by or "", "not ended")

    def to_json(self) -> dict[str, Any]:
        return {
            "call_sid": self.call_sid,
            "ended": self.ending,
            "transfer": self.transfer,
            "recorded_end": self.recorded_end,
            "recorded_transfer": self.recorded_transfer,
            "seconds": round(self.seconds, 2),
            "error": self.error,
            "turns": [turn.to_json() for turn in self.turns],
        }


def run_settings(settings: Settings, data_dir: Path, jobs: int) -> Settings:
    """The user's settings for a run: the same agent, with records of its own and nobody notified."""
    models = settings.data_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    # The embedding model, exported once into the user's DATA_DIR, is shared rather than exported again.
    (data_dir / "models").symlink_to(models.resolve(), target_is_directory=True)
    return Settings(
        _env_file=None,
        **{
            **settings.model_dump(),
            "data_dir": data_dir,
            "database_url": None,
            "record_calls": True,
            "redis_url": None,
            "workers": 1,
            "notify_webhook_url": [],
            "notify_webhook_secret": None,
            "notify_email_to": [],
            "smtp_url": None,
            "max_concurrent_calls": max(settings.max_concurrent_calls, jobs),
        },
    )


@contextlib.asynccontextmanager
async def switchboard(settings: Settings, jobs: int) -> AsyncIterator[Calls]:
    """One switchboard for a whole run, and a way to place scenarios as calls into it."""
    with tempfile.TemporaryDirectory(prefix="switchboard-calls-") as data_dir:
        async with LocalSwitchboard(run_settings(settings, Path(data_dir), jobs)) as board:
            yield Calls(board)


class Calls:
    def __init__(self, board: LocalSwitchboard) -> None:
        self.board = board
        self.services = board.services
        self.ended = _Ended()
        self.services.telephony.observers.append(self.ended)  # after the records: they know first

    @property
    def settings(self) -> Settings:
        return self.board.settings

    async def place(self, scenario: Scenario, noise: AsrNoise | None = None) -> CallSeen:
        started = time.perf_counter()
        record = CallRecord(answers_from="scenario")
        phone = Phone(self.board, record, realtime=False, caller=scenario.caller or CALLER)
        call_sid = phone.caller.call_sid
        seen = CallSeen(call_sid)
        if scenario.at is not None:
            self.services.clock.set(call_sid, scenario.at)
        try:
            async with phone:
                await phone.greeting(started)
                for number, step in enumerate(scenario.turns, 1):
                    if phone.ended:
                        break
                    heard = noise.hear(step.say, scenario.name, number) if noise is not None else step.say
                    turn = await phone.say(step.say, _quiet, heard)
                    seen.turns.append(TurnSeen(step.say, heard, turn.agent, turn.first_chunk_ms))
                await phone.hang_up()
            await self._read_records(seen, [turn.event_id for turn in record.turns])
        except TimeoutError:
            waiting = f"turn {len(record.turns)}" if record.turns else "the call to start"
            seen.error = f"the agent did not answer: nothing happened for a long time waiting for {waiting}"
        except Exception as exc:  # the report says what went wrong; the other scenarios go on
            seen.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        finally:
            self.services.clock.forget(call_sid)
            self.ended.forget(call_sid)
        seen.ended_by, seen.transfer = record.ended_by, record.transfer
        seen.seconds = time.perf_counter() - started
        return seen

    async def _read_records(self, seen: CallSeen, event_ids: list[int | None]) -> None:
        """Once the server is done with the call and has written it down: what each turn did."""
        records = self.services.records
        try:
            async with asyncio.timeout(RECORDS_TIMEOUT_S):
                await self.ended.wait(seen.call_sid)
                await records.recorder.written(RECORDS_TIMEOUT_S)
        except TimeoutError as exc:
            raise RuntimeError(f"the server had not written the call down {RECORDS_TIMEOUT_S:.0f} s after it") from exc
        async with records.engine.connect() as conn:
            detail: CallDetail | None = await get_call(conn, seen.call_sid)
            saved = (
                await conn.execute(select(messages).where(messages.c.call_sid == seen.call_sid).order_by(messages.c.id))
            ).mappings()
            taken = [_message(row) for row in saved]
        if detail is None:
            raise RuntimeError("the server kept no record of the call")
        seen.recorded_end = detail.call.end_reason
        seen.recorded_transfer = detail.call.transfer_department
        by_event = {view.event_id: view for view in detail.turns}
        for turn, event_id in zip(seen.turns, event_ids, strict=False):
            view = by_event.get(event_id)
            if view is None:
                continue
            turn.tools = view.tools
            turn.sources = list(dict.fromkeys(source.source for source in view.sources))
            turn.gap = view.unanswered
            # The messages were saved in the order the turns took them.
            for _ in range(sum(t["tool"] == "take_message" and t["decision"] == "accepted" for t in view.tools)):
                if taken:
                    turn.messages.append(taken.pop(0))


def _message(row: Any) -> dict[str, Any]:
    fields = {"name": row["name"], "callback_number": row["callback_number"], "message": row["message"]}
    if "department" in row:  # messages carry a department once handoffs know departments' hours
        fields["department"] = row["department"]
    return fields


def _quiet(text: str) -> None:
    """The agent's words are not shown as they stream: the report shows them."""


class _Ended:
    """A call observer placed after the server's own: once it hears a call ended, so have they."""

    def __init__(self) -> None:
        self._ended: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    async def call_started(self, call: CallControl) -> None:
        """Nothing to do."""

    async def call_ended(self, call: CallControl) -> None:
        self._ended[call.call_sid].set()

    def dtmf(self, call: CallControl, digit: str) -> None:
        """Keys do not matter here."""

    async def wait(self, call_sid: str) -> None:
        await self._ended[call_sid].wait()

    def forget(self, call_sid: str) -> None:
        self._ended.pop(call_sid, None)
