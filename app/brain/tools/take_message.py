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
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, create_model
from sqlalchemy.ext.asyncio import AsyncConnection

from app.brain.sanitise import CALLER_QUOTE_PREFIX
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
    """A message asked for, or offered and accepted; then its name, number and text, turn by turn."""
    said, step = turn.said, turn.step
    if step.endswith((NAME_QUESTION, NUMBER_QUESTION, MESSAGE_QUESTION)):
        if _CANCEL.search(said):
            return f"No problem. {ANYTHING_ELSE}"
        return await _exchange(turn)
    if _MESSAGE.search(said) or (_OFFERED.search(step) and YES.search(said)):
        if NAME not in turn.offered:
            return f"I'm sorry, I can't take a message right now. {ANYTHING_ELSE}"
        return f"Of course, I can take a message. {NAME_QUESTION}"
    return None


async def _exchange(turn: RuleTurn) -> str:
    said, step = turn.said, turn.step
    if step.endswith(NAME_QUESTION):
        return f"Thank you, {_name(said)}. {NUMBER_QUESTION}"
    if step.endswith(NUMBER_QUESTION):
        number = _number(said, turn.tools)
        if number is None:
            return f"Sorry, I didn't catch a phone number there. {NUMBER_QUESTION}"
        return f"I have {spoken_digits(number)}. {MESSAGE_QUESTION}"
    if _WRONG.search(said):
        return f"Sorry about that. {NUMBER_QUESTION}"
    name = _name(turn.reply_to(NAME_QUESTION) or "")
    number = _number(turn.reply_to(NUMBER_QUESTION) or "", turn.tools)
    if NAME not in turn.offered or number is None:
        return f"I'm sorry, I can't take that message right now. {ANYTHING_ELSE}"
    arguments = {"name": name, "callback_number": number, "message": said}
    department = _offered_for(turn)
    if department is not None:
        arguments["department"] = department
    if await turn.run(NAME, arguments) not in ACTED:
        # Never a promised call back that will not come: a person instead, where there is one.
        instead = TRANSFER_OFFER if TRANSFER in turn.offered else ANYTHING_ELSE
        return f"I'm sorry, I couldn't save your message. {instead}"
    team = f"the {department} team" if department else "the team"
    return (
        f"Thank you, {name}. I've passed your message on, and {team} will call you back on "
        f"{spoken_digits(number)}. {ANYTHING_ELSE}"
    )


def _offered_for(turn: RuleTurn) -> str | None:
    """The department whose message the agent offered just before asking the caller's name."""
    lines = [m.content.strip() for m in turn.transcript.history if m.role == "agent"]
    asked = max((i for i, line in enumerate(lines) if line.endswith(NAME_QUESTION)), default=None)
    if not asked:
        return None
    found = _OFFERED.search(lines[asked - 1])
    department = found["department"] if found else None
    return department if department in turn.tools.box.directory.departments else None


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
