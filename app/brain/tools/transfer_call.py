"""transfer_call: put the caller through to a person in a department that is open.

The department is one of the configured names (departments.toml, TRANSFER_TARGETS); its number
comes from there alone. A department closed right now is never dialled: code refuses, and the model
is told when it opens and which open departments handle what, to offer a message or another team.
The transfer happens once the caller has heard the agent's line; whoever answers hears who is
calling and why (`reason`, `caller_name`) and presses 1 to take it (`app.telephony.transfers`).
One per call, and none on a call already back from one. The keypad's 0 goes to the first open
department at once, or, when none is open, back to the agent saying when one opens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, create_model

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
from app.calls.registry import CallAction, LiveCall
from app.departments.directory import Directory
from app.departments.schedule import Department, is_open, next_opening
from app.departments.spoken import MESSAGE_FOR, status, when, zone_name

if TYPE_CHECKING:
    from app.brain.tools.box import CallTools, Toolbox

NAME = "transfer_call"
END = "end_call"
MESSAGE = "take_message"
KEYPAD_DIGIT = "0"
MAX_REASON_CHARS = 200

_PERSON = re.compile(
    r"\b(?:speak|talk|transfer|connect|put me through|get me)\b.*\b(?:person|someone|somebody|human|agent|"
    r"representative|operator|colleague|team|department|sales|support|billing)\b|\b(?:a human|a real person|"
    r"representative|operator)\b",
    re.IGNORECASE,
)


def arguments(departments: Sequence[str]) -> type[BaseModel]:
    """`department` is an enum of the configured names (none configured: no valid department)."""
    names = tuple(departments) or ("",)
    return create_model(
        "TransferArgs",
        __config__=STRICT,
        department=(Literal[names], Field(description="The department to transfer the caller to.")),  # type: ignore[valid-type]
        reason=(
            str | None,
            Field(
                None,
                max_length=2 * MAX_REASON_CHARS,
                description="What the caller wants, in one short sentence, for the colleague who answers "
                "(for example: wants to upgrade to a faster plan).",
            ),
        ),
        caller_name=(str | None, Field(None, max_length=100, description="The caller's name, if they said it.")),
    )


def offered(tools: CallTools, call: LiveCall | None) -> bool:
    return (
        call is not None
        and not call.ended
        and call.returned is None
        and tools.box.actions.transfers
        and not (call.used(NAME) or call.used(END))
    )


async def handle(tools: CallTools, args: BaseModel) -> Outcome:
    box, call = tools.box, tools.call
    assert call is not None
    department = box.directory.get(args.department)  # type: ignore[attr-defined]
    if department is None:
        return no("invalid_arguments", "That department is no longer configured.")
    now = box.directory.now(call.call_sid)
    if not is_open(department, now):
        box.transfer_result(call.call_sid, department.name, "closed")
        return no("closed", _closed(tools, department.name))
    claimed = await tools.claim(NAME)
    if claimed != "accepted":
        return refused(claimed, "The caller has already been transferred once on this call.")
    action = CallAction("transfer", department.name, reason=args.reason, name=args.caller_name)  # type: ignore[attr-defined]
    call.after_line(action, tools.line)
    return ok(
        f"The caller will be put through to {department.name} as soon as they have heard you; if nobody there "
        "takes the call, they come back to you. If you have not told them yet, say so in one short sentence now; "
        "otherwise say nothing more."
    )


def _closed(tools: CallTools, name: str) -> str:
    directory = tools.box.directory
    now = directory.now(tools.known_call_sid)
    department = directory.departments[name]
    others = [
        f"{d.name}" + (f" ({d.handles})" if d.handles else "")
        for d in directory.departments.values()
        if d.name != name and is_open(d, now)
    ]
    alternatives = f" Open now: {'; '.join(others)}." if others else " No other department is open now."
    return (
        f"{name} is {status(department, now)}, so the caller cannot be put through. Do not work out times yourself: "
        f"tell the caller when it opens as given here, and offer to take a message for {name} (take_message with "
        f'department "{name}"), or, if what they want fits an open department, offer that one.{alternatives}'
    )


# --- without a model ------------------------------------------------------------------------------


async def rule(turn: RuleTurn) -> str | None:
    """A request for a person or a department, or "yes" to the offer of one."""
    said = turn.said
    if not (_PERSON.search(said) or (turn.step.endswith(TRANSFER_OFFER) and YES.search(said))):
        return None
    if NAME not in turn.offered:
        return f"I'm sorry, I can't put you through right now, but I can take a message. {ANYTHING_ELSE}"
    directory = turn.tools.box.directory
    now = directory.now(turn.tools.known_call_sid)
    named = next((d for d in directory.names if _names(d, said)), None)
    first_open = directory.first_open(now)
    department = named or (first_open.name if first_open is not None else directory.names[0])
    label = await turn.run(NAME, {"department": department, "reason": _reason(turn)})
    if label in ACTED:
        return f"Of course. I'll put you through to {department} now."
    if label == "closed":
        return closed_line(turn.tools, department)
    return f"I'm sorry, I can't put you through right now. {ANYTHING_ELSE}"


def closed_line(tools: CallTools, name: str) -> str:
    """What the caller hears when `name` is closed: when it opens, who is open, and a message offer."""
    directory = tools.box.directory
    now = directory.now(tools.known_call_sid)
    department = directory.departments[name]
    opens = next_opening(department, now)
    text = f"I'm sorry, {name} is closed right now. "
    if opens is not None:
        text += f"It opens {when(opens, now, department)}, {zone_name(department)}. "
    for other in directory.departments.values():
        if other.name != name and other.handles and is_open(other, now):
            text += f"{other.name.capitalize()} is open now, for {other.handles}. "
            break
    return text + MESSAGE_FOR.format(department=name)


def _names(department: str, said: str) -> bool:
    """The caller named this department ("tech_support" is said "tech support")."""
    spoken = re.sub(r"[-_]+", " ", department)
    return re.search(rf"\b{re.escape(spoken)}\b", said, re.IGNORECASE) is not None


def _reason(turn: RuleTurn) -> str:
    """The caller's request for whoever answers: their latest words that are more than a request
    for a person, else these."""
    for message in reversed(turn.transcript.history):
        if message.role == "user" and not _PERSON.search(message.content):
            return message.content[:MAX_REASON_CHARS]
    return turn.said[:MAX_REASON_CHARS]


# --- the keypad's 0 -------------------------------------------------------------------------------


async def keypad(box: Toolbox, call: LiveCall) -> None:
    """The first open department at once; none open: back to the agent, who says when one opens."""
    if not box.actions.transfers:
        return
    if call.returned is not None:
        box.count(NAME, "keypad_refused")
        return
    claimed = await call.claim(NAME, (END,))
    if claimed != "accepted":
        box.count(NAME, "keypad_refused" if claimed != "unavailable" else "unavailable")
        return
    now = box.directory.now(call.call_sid)
    department = box.directory.first_open(now)
    box.count(NAME, "keypad")
    if department is not None:
        call.after_line(CallAction("transfer", department.name, f"Connecting you to {department.name} now."), None)
        return
    soonest = _opens_first(box.directory, now)
    box.transfer_result(call.call_sid, soonest.name, "closed")
    call.after_line(CallAction("back", soonest.name), None)


def _opens_first(directory: Directory, now: datetime) -> Department:
    def opens(department: Department) -> datetime:
        return next_opening(department, now) or datetime.max.replace(tzinfo=UTC)

    return min(directory.departments.values(), key=opens)


TOOL = Tool(
    name=NAME,
    description="Transfer the caller to a colleague in one of the listed departments, if it is open now (the "
    "departments block says). First tell the caller in one short sentence that you are putting them through; "
    "the transfer happens once they have heard it. At most once per call.",
    rule=f"- {NAME}: when the caller asks for a person, or you cannot help and they accept a transfer. Only to a "
    "department the departments block says is open now; for a closed one, say when it opens (as the block says) "
    "and offer to take a message for it, or an open department that handles the request. Say one short sentence "
    "first. Give the caller's request in one sentence as the reason, and their name if they said it. A phone "
    "number the caller or a document mentions is never somewhere you can transfer to.",
    arguments=arguments,
    handle=handle,
    offered=offered,
    limit=1,
    conflicts=(END,),
    armed_line="I'll put you through now.",
    rule_without_model=rule,
    precedence=20,
    key=KEYPAD_DIGIT,
    on_key=keypad,
)
