"""What a tool is: everything about it in one definition (the way Datasette's `hookspecs.py` says
what a plugin hook is, and `default_menu_links.py` fills one in).

A tool module makes one `Tool` and `registry.TOOLS` lists it; nothing else names it. The gate in
`box` offers it when `offered` holds, validates the model's arguments against `arguments`, keeps
its per-call `limit`, runs `handle` (once per turn: a turn sent again gets the first attempt's
outcome, see `effects`), and `prompt.Prompt` adds its `rule` when it is offered. Without a model,
`documents_only` asks it through its `rule_without_model` with the same gate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from app.brain.sanitise import SanitisedTranscript
from app.calls.registry import Claim, LiveCall

if TYPE_CHECKING:
    from app.brain.tools.box import CallTools, Toolbox

STRICT = ConfigDict(extra="forbid", str_strip_whitespace=True)
# Lines more than one tool's rules say.
ANYTHING_ELSE = "Is there anything else I can help with?"
TRANSFER_OFFER = "Would you like me to put you through to someone instead?"
YES = re.compile(r"^\W*(?:yes|yeah|yep|sure|ok|okay|please)\b", re.IGNORECASE)
# Outcomes of a tool call that did what was asked: now, or in an earlier attempt at the same turn.
ACTED = frozenset({"accepted", "repeated"})


@dataclass(frozen=True)
class Outcome:
    """What one tool call came to: a metrics label and the text the model gets back."""

    label: str
    content: str

    @property
    def accepted(self) -> bool:
        return self.label == "accepted"


def ok(text: str) -> Outcome:
    return Outcome("accepted", json.dumps({"ok": True, "result": text}))


def no(label: str, text: str) -> Outcome:
    return Outcome(label, json.dumps({"ok": False, "error": text}))


def refused(claimed: Claim, over_limit: str) -> Outcome:
    """The tool result for a claim on the call's allowance that was not granted."""
    if claimed == "conflict":
        return no("conflict", "The call is already being transferred or ended.")
    if claimed == "unavailable":
        return no(
            "unavailable",
            "That cannot be done right now (a system the call depends on is not reachable). Tell the caller, and "
            "offer to take a message instead.",
        )
    return no("limit", over_limit)


@dataclass
class RuleTurn:
    """One turn as a documents-only rule sees it: what was said, where the conversation is (the
    agent's last line), the tools offered, and `run` to ask for a tool through the gate."""

    transcript: SanitisedTranscript
    tools: CallTools
    offered: tuple[str, ...]
    company: str
    note: Callable[[str, str], None]  # (tool, outcome), for the turn's record
    ask: Callable[[str, dict[str, Any]], Awaitable[str]]  # (tool, arguments) through the gate → its outcome

    @property
    def said(self) -> str:
        return self.transcript.utterance

    @property
    def step(self) -> str:
        """The agent's last line: where a multi-turn exchange is."""
        return next((m.content.strip() for m in reversed(self.transcript.history) if m.role == "agent"), "")

    def reply_to(self, question: str) -> str | None:
        """The caller's answer to the agent's latest line that asked `question`."""
        history = self.transcript.history
        for i in range(len(history) - 1, -1, -1):
            if history[i].role == "agent" and history[i].content.strip().endswith(question):
                return next((m.content for m in history[i + 1 :] if m.role == "user"), None)
        return None

    def agent_said(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        """The latest agent line in the history that matches `pattern`."""
        for message in reversed(self.transcript.history):
            if message.role == "agent" and (found := pattern.search(message.content)):
                return found
        return None

    async def run(self, tool: str, arguments: dict[str, Any]) -> str:
        """Ask for `tool` through the gate; returns its outcome label."""
        return await self.ask(tool, arguments)


Arguments = Callable[[Sequence[str]], type[BaseModel]]  # the department names in effect → the model
Handler = Callable[["CallTools", Any], Awaitable[Outcome]]
Offered = Callable[["CallTools", LiveCall | None], bool]
Rule = Callable[[RuleTurn], Awaitable[str | None]]
KeyHandler = Callable[["Toolbox", LiveCall], Awaitable[None]]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str  # what the model reads in the tool's schema
    rule: str  # the line the system prompt adds when the tool is offered
    arguments: Arguments
    handle: Handler
    offered: Offered  # its prerequisites hold right now
    limit: int | None = None  # per call, however it is asked for; None: not an action on the call
    conflicts: tuple[str, ...] = ()  # tools whose use on the call rules this one out
    once_per_turn: bool = True  # a turn sent again gets the first attempt's accepted outcome
    needs_reply: bool = True  # False: once the model has spoken, running it ends the turn (a gap noted)
    armed_line: str | None = None  # what the caller hears when the model asked for it and said nothing
    rule_without_model: Rule | None = None  # how a caller asks for it when there is no model
    precedence: int = 0  # order among the rules without a model (lower first)
    key: str | None = None  # a keypad digit that asks for it at once, without the model
    on_key: KeyHandler | None = None


def describe(exc: ValidationError) -> str:
    """Which argument was wrong and why, short, without echoing the input back."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:4]:
        where = ".".join(str(p) for p in error["loc"])[:40] or "arguments"
        parts.append(f"{where}: {error['msg'][:120]}")
    return "invalid arguments (" + "; ".join(parts) + ")"
