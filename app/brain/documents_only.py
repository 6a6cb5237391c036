"""Without a model: the tools and the opening hours, by rules.

With no model configured the agent still answers from the documents (`spoken_fallback`), and a
caller who asks for a person, wants to leave a message or says goodbye still gets what they asked
for: each tool's own rule (its definition's `rule_without_model`) proposes its tool calls, which
run through the same gated `CallTools` as the model's (offered on this call, arguments validated,
per-call limits), so no rule can do what a model could not. A question about opening hours ("are
you open on Saturday?", "when is sales open?") is answered from the departments' schedule, as the
model would be told it.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from app.brain import small_talk
from app.brain.effects import TurnKey
from app.brain.llm import ToolCall
from app.brain.sanitise import SanitisedTranscript
from app.brain.tools import TOOLS, CallTools
from app.brain.tools.definition import RuleTurn
from app.departments.directory import Directory
from app.departments.schedule import Department
from app.departments.spoken import DAY_NAMES, day_hours, status, weekly, zone_name
from app.settings import Settings

Note = Callable[[str, str], None]
RULES = sorted((tool for tool in TOOLS if tool.rule_without_model is not None), key=lambda tool: tool.precedence)

# A question about opening hours, not about opening or closing an account.
_HOURS = re.compile(
    r"\b(?:are|is)\s+(?:you|they|it|the \w+|\w+)\s+(?:still\s+)?(?:open|closed)\b"
    r"|\b(?:opening|business|office|phone)\s+hours\b|\byour hours\b|\bwhat are the hours\b|\bhours (?:of|for)\b"
    r"|\bwhen\s+(?:do|does|is|are|will)\b.{0,30}\b(?:open|opens|close|closes|closed)\b"
    r"|\bwhat time\b.{0,30}\b(?:open|opens|close|closes)\b"
    r"|\bopen\s+(?:on|this|today|tonight|tomorrow|at the weekend|on the weekend)\b",
    re.IGNORECASE,
)
_WEEKEND = re.compile(r"\bweekend\b", re.IGNORECASE)
# The agent cannot take a payment: asked to, it says so and answers how to pay from the documents.
_PAYMENT = re.compile(
    r"\b(?:take|make|accept|process|put through)\b.{0,20}\bpayments?\b"
    r"|\bpay\b.{0,20}\b(?:over the phone|on this call|with (?:my|a|this) (?:card|credit card|debit card)|by card)\b"
    r"|\bcard (?:number|details)\b.{0,60}\bpay",
    re.IGNORECASE,
)
NO_PAYMENTS = "I'm sorry, I can't take a payment on this call, so please don't read out card details."
PAYMENT_QUESTION = "How can I pay my bill by card?"


def payment_request(said: str) -> bool:
    """The caller asks the agent to take a payment (which it cannot)."""
    return _PAYMENT.search(said) is not None


class DocumentsOnly:
    def __init__(self, settings: Settings, directory: Directory) -> None:
        self.company = settings.company_name
        self.directory = directory
        self._ids = itertools.count(1)

    async def act(
        self, transcript: SanitisedTranscript, turn: TurnKey, tools: CallTools | None, done: Note
    ) -> str | None:
        """What to say when this turn is a tool request (after running it) or a question about
        opening hours, or None for a question for the documents.

        `done(tool, outcome)` is told each tool call's outcome, for the turn's record.
        """
        if tools is not None:
            offered = await tools.begin_turn(turn)

            async def ask(tool: str, arguments: dict[str, Any]) -> str:
                await tools.run([ToolCall(f"rule_{next(self._ids)}", tool, json.dumps(arguments))])
                done(tool, tools.labels[0])
                return tools.labels[0]

            said = RuleTurn(transcript, tools, offered, self.company, done, ask)
            for tool in RULES:
                assert tool.rule_without_model is not None
                line = await tool.rule_without_model(said)
                if line is not None:
                    return line
        call_sid = tools.known_call_sid if tools is not None else None
        return self.hours(transcript.utterance, call_sid) or small_talk.reply(transcript.utterance)

    def hours(self, said: str, call_sid: str | None = None) -> str | None:
        """An answer from the schedule, at `call_sid`'s time, to a question about opening hours, or None."""
        departments = list(self.directory.departments.values())
        if not departments or not _HOURS.search(said):
            return None
        named = [d for d in departments if _names(d.name, said)]
        asked = named or departments
        now = self.directory.now(call_sid)
        days = _days(said, now.astimezone(asked[0].zone).date())
        if days:
            return " ".join(_on_days(d, days) for d in asked)
        return " ".join(
            f"{d.name.capitalize()} is {_spoken(status(d, now))}. Its hours are {weekly(d)}"
            + ("." if weekly(d).startswith("around the clock") else f", {zone_name(d)}.")
            for d in asked
        )


def _names(department: str, said: str) -> bool:
    spoken = re.sub(r"[-_]+", " ", department)
    return re.search(rf"\b{re.escape(spoken)}\b", said, re.IGNORECASE) is not None


def _days(said: str, today: date) -> list[date]:
    """The dates the caller asked about: a weekday (the next one, today included), today, tomorrow,
    or the weekend."""
    lowered = said.lower()
    if _WEEKEND.search(said):
        saturday = today + timedelta(days=(5 - today.weekday()) % 7)
        return [saturday, saturday + timedelta(days=1)]
    if re.search(r"\btomorrow\b", lowered):
        return [today + timedelta(days=1)]
    if re.search(r"\b(?:today|tonight)\b", lowered):
        return [today]
    for n, name in enumerate(DAY_NAMES):
        if re.search(rf"\b{name.lower()}\b", lowered):
            return [today + timedelta(days=(n - today.weekday()) % 7)]
    return []


def _on_days(department: Department, days: list[date]) -> str:
    parts = [f"on {DAY_NAMES[d.weekday()]} {d.day} {d:%B}, {day_hours(department, d)}" for d in days]
    where = "" if weekly(department).startswith("around the clock") else f" ({zone_name(department)})"
    return f"{department.name.capitalize()}{where}: " + "; ".join(parts) + "."


def _spoken(status_text: str) -> str:
    """The schedule's status as a sentence for the ear: no parentheses."""
    return status_text.replace(" (", ", ").replace(")", "")
