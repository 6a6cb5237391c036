"""take_message: save a message for the team, or for one department, before the agent confirms it.

Name, callback number (checked, stored as +E.164) and up to 500 characters of message, committed
to the records store before the model hears back. On a call back from a transfer nobody took, or
after the offer of a message for a closed department, the message is that department's. Three per
call.

Without a model it is taken over several turns: name, callback number (read back), then the
message. Where the conversation is in that exchange is read from the agent's last line, so nothing
is kept between turns but the conversation itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, create_model
from sqlalchemy.ext.asyncio import AsyncConnection

from app.brain.sanitise import CALLER_QUOTE_PREFIX
from app.brain.sanitise import Message as Line
from app.brain.small_talk import small_talk
from app.brain.tools.definition import (
    ACTED,
    ANYTHING_ELSE,
    STRICT,
    TRANSFER_OFFER,
    YES,
    Outcome,
    RuleTurn,
    Tool,
    no,
    ok,
    refused,
)
from app.callbacks.dialer import Planner
from app.callbacks.store import schedule_in
from app.calls.registry import LiveCall
from app.departments.spoken import MESSAGE_FOR
from app.records.messages import (
    MAX_MESSAGE_CHARS,
    MAX_NAME_CHARS,
    Message,
    Then,
    clean_text,
    normalise_number,
    spoken_digits,
)

if TYPE_CHECKING:
    from app.brain.tools.box import CallTools

log = logging.getLogger("switchboard.tools")

NAME = "take_message"
TRANSFER = "transfer_call"
NAME_QUESTION = "What's your name?"
NUMBER_QUESTION = "What number should the team call you back on?"
MESSAGE_QUESTION = "What would you like me to tell the team?"

_MESSAGE = re.compile(r"\b(?:leave|take)\b.{0,20}\bmessage\b|\bcall(?:s)? me back\b|\bcallback\b", re.IGNORECASE)
_OFFERED = re.compile(re.escape(MESSAGE_FOR).replace(r"\{department\}", r"(?P<department>[a-z][a-z0-9_-]*)") + "$")
_CANCEL = re.compile(r"^\W*(?:never ?mind|cancel|forget it|no thanks)\b", re.IGNORECASE)
_WRONG = re.compile(r"^\W*(?:no\b|nope\b|that's wrong|that is wrong|wrong number|that's not right)", re.IGNORECASE)
_SAME_NUMBER = re.compile(r"\b(?:this|same|my) (?:number|phone)\b|\bcalling from\b", re.IGNORECASE)
_GOODBYE = re.compile(r"\b(?:bye|goodbye|good bye)\b", re.IGNORECASE)
# A name said in passing: capitalised, as speech recognition writes names ("I'm calling" is no name).
_NAME_SAID = re.compile(
    r"\b(?i:my name is|my name's|this is|i'm|i am)\s+(?P<name>[A-Z][\w'-]+(?:\s+[A-Z][\w'-]+){0,2})"
)
_ABOUT = re.compile(r"\b(?:it's |it is )?(?P<about>(?:about|regarding|concerning)\s+.{3,})$", re.IGNORECASE)
_DIGIT_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip
_OH_BESIDE_DIGITS = re.compile(r"(?<=\d)[\s,-]*\b(?:oh|o)\b|\b(?:oh|o)\b(?=[\s,-]*\d)", re.IGNORECASE)
_SPOKEN_DIGIT = re.compile(
    r"\b(?:(?P<times>double|triple)\s+)?(?P<digit>" + "|".join(_DIGIT_WORDS) + r")\b", re.IGNORECASE
)
_NAME_LEAD = re.compile(r"^\W*(?:(?:my name is|my name's|this is|it's|it is|i'm|i am|name's)\s+)", re.IGNORECASE)


def arguments(departments: Sequence[str]) -> type[BaseModel]:
    department: object = Literal[tuple(departments)] if departments else Literal[""]
    return create_model(
        "MessageArgs",
        __config__=STRICT,
        name=(str, Field(min_length=1, max_length=MAX_NAME_CHARS, description="The caller's name.")),
        callback_number=(
            str | None,
            Field(
                None,
                max_length=40,
                description="The number to call back, as the caller said it. Omit it to use the number they are "
                "calling from.",
            ),
        ),
        message=(
            str,
            Field(
                min_length=1,
                max_length=8 * MAX_MESSAGE_CHARS,
                description=f"The message for the team, in the caller's words (up to {MAX_MESSAGE_CHARS} characters "
                "are kept).",
            ),
        ),
        department=(
            department | None,  # type: ignore[operator]
            Field(None, description="The department the message is for, when it is for one (a closed one, say)."),
        ),
    )


def offered(tools: CallTools, call: LiveCall | None) -> bool:
    records = tools.box.records
    return records is not None and records.ready.is_set() and tools.left(NAME)


async def handle(tools: CallTools, args: BaseModel) -> Outcome:
    fields = args.model_dump()
    assert tools.box.records is not None
    store = tools.box.records.messages
    call = tools.call
    name = clean_text(fields["name"], MAX_NAME_CHARS)
    text = clean_text(fields["message"], MAX_MESSAGE_CHARS)
    if not name or not text:
        return no("invalid_arguments", "The name and the message must not be empty.")
    said = fields["callback_number"] or (call.caller if call is not None else "")
    number = normalise_number(said) if said else None
    if number is None:
        if fields["callback_number"]:
            return no("invalid_number", "That callback number is not a valid phone number. Ask the caller again.")
        return no("invalid_number", "Ask the caller for a callback number.")
    department = fields["department"] or (call.returned.department if call is not None and call.returned else None)
    claimed = await tools.claim(NAME)
    if claimed != "accepted":
        return refused(claimed, "Three messages have already been taken on this call; no more can be saved.")
    try:
        # Committed before the model hears back, so a hang-up right after loses nothing.
        saved = await store.add(
            then=_call_back(tools),
            name=name,
            callback_number=number,
            message=text,
            call_sid=call.call_sid if call is not None else None,
            caller=call.caller if call is not None else None,
            conversation_id=tools.conversation_id,
            department=department,
        )
    except Exception:
        log.exception("message could not be saved", extra={"call_sid": tools.known_call_sid})
        return no("failed", "The message could not be saved. Apologise and offer to transfer the caller.")
    log.info("message %d saved", saved.id, extra={"call_sid": tools.known_call_sid})
    kept = "" if len(fields["message"]) <= MAX_MESSAGE_CHARS else f" (shortened to {MAX_MESSAGE_CHARS} characters)"
    team = f"{department} team" if department else "team"
    return ok(f"Message saved{kept}. The {team} will call back on {number}.")


def _call_back(tools: CallTools) -> Then | None:
    """With CALLBACK=auto, the message's call-back is scheduled with it: for the next moment the
    callee may be called and its department is open."""
    box = tools.box
    if box.settings.callback != "auto":
        return None
    planner = Planner(box.settings, box.directory)
    now = box.directory.now()

    async def schedule(conn: AsyncConnection, saved: Message) -> None:
        await schedule_in(conn, saved.id, saved.callback_number, saved.department, now, planner.plan, now)

    return schedule


# --- without a model ------------------------------------------------------------------------------


async def rule(turn: RuleTurn) -> str | None:
    """A message asked for, or offered and accepted; then whatever of its name, number and text the
    caller has not given yet, turn by turn. What they said in one go is not asked for again."""
    said, step = turn.said, turn.step
    if step.endswith((NAME_QUESTION, NUMBER_QUESTION, MESSAGE_QUESTION)):
        if _CANCEL.search(said):
            return f"No problem. {ANYTHING_ELSE}"
        if _GOODBYE.search(said) and small_talk(said):
            return None  # "thanks, bye" is a goodbye, not a name: the goodbye's rule ends the call
        return await _exchange(turn)
    if _MESSAGE.search(said) or (_OFFERED.search(step) and YES.search(said)):
        if NAME not in turn.offered:
            return f"I'm sorry, I can't take a message right now. {ANYTHING_ELSE}"
        return await _next(turn, _Fields.of([said], turn), "Of course, I can take a message.")
    return None


@dataclass
class _Fields:
    """What the caller has given for the message so far."""

    name: str | None = None
    number: str | None = None
    text: str | None = None

    @classmethod
    def of(cls, lines: list[str], turn: RuleTurn) -> _Fields:
        """Read from the caller's lines of the exchange (its request first): a name, a number and a
        reason said in passing ("my name is Ana Ruiz, call me back at 212 867 5309 about a double charge")."""
        fields = cls()
        for line in lines:
            line = line.removeprefix(CALLER_QUOTE_PREFIX)
            if fields.name is None and (named := _NAME_SAID.search(line)):
                fields.name = named["name"].strip()
            if fields.number is None:
                fields.number = _number(line, turn.tools, own=False)
            if fields.text is None and (about := _ABOUT.search(line)):
                fields.text = about["about"].strip(" .,!?")
        return fields


async def _next(turn: RuleTurn, fields: _Fields, lead: str) -> str:
    """Ask for the first thing still missing, or save the message when nothing is."""
    if fields.name is None:
        return f"{lead} {NAME_QUESTION}"
    if fields.number is None:
        return f"{lead} Thank you, {fields.name}. {NUMBER_QUESTION}".lstrip()
    if fields.text is None:
        return f"{lead} I have {spoken_digits(fields.number)}. {MESSAGE_QUESTION}".lstrip()
    return await _save(turn, fields)


async def _exchange(turn: RuleTurn) -> str:
    said, step = turn.said, turn.step
    if step.endswith(MESSAGE_QUESTION) and _WRONG.search(said):
        return f"Sorry about that. {NUMBER_QUESTION}"  # the number read back was wrong
    if step.endswith(NUMBER_QUESTION) and _number(said, turn.tools) is None:
        return f"Sorry, I didn't catch a phone number there. {NUMBER_QUESTION}"
    return await _next(turn, _gathered(turn), "")


def _gathered(turn: RuleTurn) -> _Fields:
    """The message so far: the caller's answers to the agent's questions in this exchange, and what
    they said in passing in its other lines."""
    exchange = _exchange_lines(turn.transcript.history, turn.said, turn.step)
    fields = _Fields.of([line for line, _ in exchange], turn)
    for line, question in exchange:
        if question == NAME_QUESTION:
            fields.name = _name(line)
        elif question == NUMBER_QUESTION:
            fields.number = _number(line, turn.tools) or fields.number
        elif question == MESSAGE_QUESTION and not _WRONG.search(line):
            fields.text = line
    return fields


async def _save(turn: RuleTurn, fields: _Fields) -> str:
    assert fields.name is not None and fields.number is not None and fields.text is not None
    if NAME not in turn.offered:
        return f"I'm sorry, I can't take that message right now. {ANYTHING_ELSE}"
    arguments = {"name": fields.name, "callback_number": fields.number, "message": fields.text}
    lines = [line for line, _ in _exchange_lines(turn.transcript.history, turn.said, turn.step)]
    department = _offered_for(turn, len(lines)) or _named_department(lines, turn)
    if department is not None:
        arguments["department"] = department
    if await turn.run(NAME, arguments) not in ACTED:
        # Never a promised call back that will not come: a person instead, where there is one.
        instead = TRANSFER_OFFER if TRANSFER in turn.offered else ANYTHING_ELSE
        return f"I'm sorry, I couldn't save your message. {instead}"
    team = f"the {department} team" if department else "the team"
    return (
        f"Thank you, {fields.name}. I've passed your message on, and {team} will call you back on "
        f"{spoken_digits(fields.number)}. {ANYTHING_ELSE}"
    )


def _exchange_lines(history: Sequence[Line], said: str, step: str) -> list[tuple[str, str | None]]:
    """The caller's lines since they asked for the message (that request first, this turn's last),
    each with the question it answered, if it answered one."""

    def question(agent_line: str) -> str | None:
        return next((q for q in (NAME_QUESTION, NUMBER_QUESTION, MESSAGE_QUESTION) if agent_line.endswith(q)), None)

    lines: list[tuple[str, str | None]] = [(said, question(step))]
    i = len(history) - 1
    while i > 0:
        agent, caller = history[i], history[i - 1]
        if agent.role != "agent" or caller.role != "user" or question(agent.content.strip()) is None:
            break
        asked_before = next((m.content.strip() for m in reversed(history[: i - 1]) if m.role == "agent"), "")
        lines.insert(0, (caller.content, question(asked_before)))
        i -= 2
    return lines


def _named_department(lines: list[str], turn: RuleTurn) -> str | None:
    """A department the caller named for the message ("a message for billing")."""
    for line in lines:
        for department in turn.tools.box.directory.departments:
            if re.search(rf"\bfor (?:the )?{re.escape(department)}\b", line, re.IGNORECASE):
                return department
    return None


def _offered_for(turn: RuleTurn, exchanged: int) -> str | None:
    """The department whose message the agent offered in the line the caller's request answered
    (`exchanged`: the caller's lines in the exchange, this turn's included)."""
    history = turn.transcript.history
    before = len(history) - 2 * (exchanged - 1) - 1
    if before < 0 or history[before].role != "agent":
        return None
    found = _OFFERED.search(history[before].content.strip())
    department = found["department"] if found else None
    return department if department in turn.tools.box.directory.departments else None


def _name(said: str) -> str:
    """The name given in answer to the question, without a number or anything else said after it."""
    said = _NAME_LEAD.sub("", said.removeprefix(CALLER_QUOTE_PREFIX)).strip(" .,!?")
    name = re.split(r"[\d,;]|\b(?:and|my number|call me)\b", said, maxsplit=1)[0].strip(" .,!?")
    return (name or said)[:60] or "there"  # nothing before a number: the answer as said (it is redacted)


def _number(said: str, tools: CallTools, own: bool = True) -> str | None:
    """The callback number said (E.164), digits or words ("two one two, eight six seven…"); with
    `own`, the caller's own when they say "this number"."""
    digits = re.sub(r"[^\d+]", "", _as_digits(said))
    if len(digits) >= 7:
        return normalise_number(digits)
    if own and _SAME_NUMBER.search(said) and tools.call is not None:
        return normalise_number(tools.call.caller)
    return None


def _as_digits(said: str) -> str:
    """Digits spoken as words written as digits: "oh one double three" -> "0 1 33"."""

    def spoken(found: re.Match[str]) -> str:
        times = {"double": 2, "triple": 3}.get((found["times"] or "").lower(), 1)
        return _DIGIT_WORDS[found["digit"].lower()] * times

    # "oh" is a digit only beside another one ("oh, my number is…" adds none).
    digits = _OH_BESIDE_DIGITS.sub("0", _SPOKEN_DIGIT.sub(spoken, said))
    return digits


TOOL = Tool(
    name=NAME,
    description="Save a message for the team, or for one department: the caller's name, a callback number and the "
    "message. Read the number back to the caller before saving. At most three per call.",
    rule=f"- {NAME}: when the caller wants to leave a message, or accepts your offer of one (for a closed department, "
    "or when nobody could take a transfer: then give that department). Ask for their name, a callback number and "
    "the message; read the number back, then save it once.",
    arguments=arguments,
    handle=handle,
    offered=offered,
    limit=3,
    rule_without_model=rule,
    precedence=10,
)
