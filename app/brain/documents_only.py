"""The three tools without a model: a person, a message, goodbye, recognised by rules.

With no model configured the agent still answers from the documents (`spoken_fallback`), and a
caller who asks for a person, wants to leave a message or says goodbye still gets what they asked
for. The rules here only propose tool calls; they run through the same gated `CallTools` as the
model's (offered on this call, arguments validated, per-call limits), so no rule can do what a
model could not.

A message is taken over several turns: name, callback number (read back), then the message. Where
the conversation is in that exchange is read from the agent's last line in the history, so nothing
is kept between turns but the conversation itself.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import phonenumbers

from app.brain.effects import TurnKey
from app.brain.llm import ToolCall
from app.brain.sanitise import CALLER_QUOTE_PREFIX, SanitisedTranscript
from app.brain.tools import ACTED
from app.calls.registry import END_TOOL, MESSAGE_TOOL, TRANSFER_TOOL
from app.records.messages import DEFAULT_REGION, normalise_number
from app.settings import Settings

if TYPE_CHECKING:
    from app.brain.tools import CallTools

Note = Callable[[str, str], None]
NAME_QUESTION = "What's your name?"
NUMBER_QUESTION = "What number should the team call you back on?"
MESSAGE_QUESTION = "What would you like me to tell the team?"
ANYTHING_ELSE = "Is there anything else I can help with?"
TRANSFER_OFFER = "Would you like me to put you through to someone instead?"

_MESSAGE = re.compile(r"\b(?:leave|take)\b.{0,20}\bmessage\b|\bcall(?:s)? me back\b|\bcallback\b", re.IGNORECASE)
_PERSON = re.compile(
    r"\b(?:speak|talk|transfer|connect|put me through|get me)\b.*\b(?:person|someone|somebody|human|agent|"
    r"representative|operator|colleague|team|department|sales|support|billing)\b|\b(?:a human|a real person|"
    r"representative|operator)\b",
    re.IGNORECASE,
)
_GOODBYE = re.compile(r"\b(?:bye|goodbye|good bye|that's all|that is all|nothing else|hang up)\b", re.IGNORECASE)
_NOTHING_MORE = re.compile(
    r"^\W*(?:no|nope|that's it|that is it)(?:\W+(?:that's it|that is it|that's all|thanks|thank you))*\W*$", re.I
)
_YES = re.compile(r"^\W*(?:yes|yeah|yep|sure|ok|okay|please)\b", re.IGNORECASE)
_CANCEL = re.compile(r"^\W*(?:never ?mind|cancel|forget it|no thanks)\b", re.IGNORECASE)
_WRONG = re.compile(r"^\W*(?:no\b|nope\b|that's wrong|that is wrong|wrong number|that's not right)", re.IGNORECASE)
_SAME_NUMBER = re.compile(r"\b(?:this|same|my) (?:number|phone)\b|\bcalling from\b", re.IGNORECASE)
_NAME_LEAD = re.compile(r"^\W*(?:(?:my name is|my name's|this is|it's|it is|i'm|i am|name's)\s+)", re.IGNORECASE)


class DocumentsOnlyTools:
    def __init__(self, settings: Settings) -> None:
        self.company = settings.company_name
        self.departments = list(settings.transfer_targets)
        self._ids = itertools.count(1)

    async def act(self, transcript: SanitisedTranscript, turn: TurnKey, tools: CallTools, done: Note) -> str | None:
        """What to say when this turn is a tool request (after running it), or None for a question.

        `done(tool, outcome)` is told each tool call's outcome, for the turn's record.
        """
        offered = await tools.begin_turn(turn)
        said = transcript.utterance
        step = _last_agent_line(transcript)
        if step.endswith((NAME_QUESTION, NUMBER_QUESTION, MESSAGE_QUESTION)):
            if _CANCEL.search(said):
                return f"No problem. {ANYTHING_ELSE}"
            return await self._message(transcript, tools, offered, done)
        if _MESSAGE.search(said):
            if MESSAGE_TOOL not in offered:
                return f"I'm sorry, I can't take a message right now. {ANYTHING_ELSE}"
            return f"Of course, I can take a message. {NAME_QUESTION}"
        if _PERSON.search(said) or (step.endswith(TRANSFER_OFFER) and _YES.search(said)):
            if TRANSFER_TOOL not in offered:
                return f"I'm sorry, I can't put you through right now, but I can take a message. {ANYTHING_ELSE}"
            department = next((d for d in self.departments if _names(d, said)), self.departments[0])
            if await self._run(tools, TRANSFER_TOOL, {"department": department}, done):
                return f"Of course. I'll put you through to {department} now."
            return f"I'm sorry, I can't put you through right now. {ANYTHING_ELSE}"
        if _GOODBYE.search(said) or (step.endswith(ANYTHING_ELSE) and _NOTHING_MORE.search(said)):
            if END_TOOL in offered:
                await self._run(tools, END_TOOL, {"reason": "the caller said goodbye"}, done)
            return f"Thank you for calling {self.company}. Goodbye."
        return None

    async def _message(
        self, transcript: SanitisedTranscript, tools: CallTools, offered: tuple[str, ...], done: Note
    ) -> str:
        said = transcript.utterance
        step = _last_agent_line(transcript)
        if step.endswith(NAME_QUESTION):
            return f"Thank you, {_name(said)}. {NUMBER_QUESTION}"
        if step.endswith(NUMBER_QUESTION):
            number = _number(said, tools)
            if number is None:
                return f"Sorry, I didn't catch a phone number there. {NUMBER_QUESTION}"
            return f"I have {_spoken_digits(number)}. {MESSAGE_QUESTION}"
        if _WRONG.search(said):
            return f"Sorry about that. {NUMBER_QUESTION}"
        name = _name(_reply_to(transcript, NAME_QUESTION) or "")
        number = _number(_reply_to(transcript, NUMBER_QUESTION) or "", tools)
        if MESSAGE_TOOL not in offered or number is None:
            return f"I'm sorry, I can't take that message right now. {ANYTHING_ELSE}"
        if not await self._run(tools, MESSAGE_TOOL, {"name": name, "callback_number": number, "message": said}, done):
            # Never a promised call back that will not come: a person instead, where there is one.
            instead = TRANSFER_OFFER if TRANSFER_TOOL in offered else ANYTHING_ELSE
            return f"I'm sorry, I couldn't save your message. {instead}"
        return (
            f"Thank you, {name}. I've passed your message on, and the team will call you back on "
            f"{_spoken_digits(number)}. {ANYTHING_ELSE}"
        )

    async def _run(self, tools: CallTools, name: str, arguments: dict[str, str], done: Note) -> bool:
        call = ToolCall(f"rule_{next(self._ids)}", name, json.dumps(arguments))
        await tools.run([call])
        done(name, tools.labels[0])
        return tools.labels[0] in ACTED


def _names(department: str, said: str) -> bool:
    """The caller named this department ("tech_support" is said "tech support")."""
    spoken = re.sub(r"[-_]+", " ", department)
    return re.search(rf"\b{re.escape(spoken)}\b", said, re.IGNORECASE) is not None


def _last_agent_line(transcript: SanitisedTranscript) -> str:
    return next((m.content.strip() for m in reversed(transcript.history) if m.role == "agent"), "")


def _reply_to(transcript: SanitisedTranscript, question: str) -> str | None:
    """The caller's answer to the agent's latest line that asked `question`."""
    history = transcript.history
    for i in range(len(history) - 1, -1, -1):
        if history[i].role == "agent" and history[i].content.strip().endswith(question):
            return next((m.content for m in history[i + 1 :] if m.role == "user"), None)
    return None


def _name(said: str) -> str:
    name = _NAME_LEAD.sub("", said.removeprefix(CALLER_QUOTE_PREFIX)).strip(" .,!?")
    return name[:60] or "there"


def _number(said: str, tools: CallTools) -> str | None:
    """The callback number said (E.164), or the caller's own when they say "this number"."""
    digits = re.sub(r"[^\d+]", "", said)
    if len(digits) >= 7:
        return normalise_number(digits)
    if _SAME_NUMBER.search(said) and tools.call is not None:
        return normalise_number(tools.call.caller)
    return None


def _spoken_digits(number: str) -> str:
    """+14155550123 as "4 1 5, 5 5 5, 0 1 2 3": read back digit by digit, in the usual groups."""
    parsed = phonenumbers.parse(number, DEFAULT_REGION)
    region = phonenumbers.region_code_for_number(parsed)
    style = (
        phonenumbers.PhoneNumberFormat.NATIONAL
        if region == DEFAULT_REGION
        else phonenumbers.PhoneNumberFormat.INTERNATIONAL
    )
    groups = re.findall(r"\d+", phonenumbers.format_number(parsed, style))
    return ", ".join(" ".join(group) for group in groups)
