"""do_not_call: the callee of a call-back asks never to be called again. Their number goes on the
do-not-call list, and every call-back to it not yet placed is closed. Offered on call-backs the
agent placed, once per call.

Without a model, "don't call me again" (and the like) asks for it; its rule runs before the
message's, which "don't call me back" would otherwise look like.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel

from app.brain.tools.definition import ACTED, ANYTHING_ELSE, STRICT, Outcome, RuleTurn, Tool, no, ok, refused
from app.calls.registry import LiveCall
from app.records.messages import normalise_number

if TYPE_CHECKING:
    from app.brain.tools.box import CallTools

log = logging.getLogger("switchboard.tools")

NAME = "do_not_call"
_STOP = re.compile(
    r"\b(?:don'?t|do not|never|stop)\s+(?:ever\s+)?(?:call|calling|ring|ringing|phone|phoning)\s+(?:me|this number)\b"
    r"|\b(?:take|remove|put)\s+(?:me|my number)\s+(?:off|on)\b.{0,20}\b(?:list|do not call)\b"
    r"|\bdo[- ]not[- ]call list\b",
    re.IGNORECASE,
)
DONE_LINE = "Of course. I've taken your number off our call list, and we won't call you again."


class DoNotCallArgs(BaseModel):
    model_config = STRICT


def arguments(departments: Sequence[str]) -> type[BaseModel]:
    return DoNotCallArgs


def offered(tools: CallTools, call: LiveCall | None) -> bool:
    records = tools.box.records
    return (
        call is not None
        and call.outbound is not None
        and records is not None
        and records.ready.is_set()
        and tools.left(NAME)
    )


async def handle(tools: CallTools, args: DoNotCallArgs) -> Outcome:
    call = tools.call
    records = tools.box.records
    assert call is not None and records is not None
    number = normalise_number(call.caller)
    if number is None:
        return no("invalid_number", "This call has no number to put on the list.")
    claimed = await tools.claim(NAME)
    if claimed != "accepted":
        return refused(claimed, "The number is already on the do-not-call list.")
    try:
        closed = await records.callbacks.do_not_call(
            number, f"asked on call {call.call_sid}", tools.box.directory.now()
        )
    except Exception:
        log.exception("do-not-call not saved", extra={"call_sid": call.call_sid})
        return no("failed", "The request could not be saved. Apologise, and say the team will be told.")
    log.info("number put on the do-not-call list (%d call-back(s) closed)", closed, extra={"call_sid": call.call_sid})
    return ok(
        "The number is on the do-not-call list: no call-back will be placed to it again. Tell the caller so in "
        "one short sentence."
    )


async def rule(turn: RuleTurn) -> str | None:
    """ "Don't call me again", "take me off your list"."""
    if not _STOP.search(turn.said):
        return None
    if NAME in turn.offered and await turn.run(NAME, {}) in ACTED:
        return f"{DONE_LINE} {ANYTHING_ELSE}"
    return f"I'm sorry, I can't change that from here, but I'll make sure the team knows. {ANYTHING_ELSE}"


TOOL = Tool(
    name=NAME,
    description="Put the number this call-back reached on the do-not-call list, when the person asks never to be "
    "called again. Once per call.",
    rule=f'- {NAME}: when the person you called asks not to be called again ("don\'t call me again", "take me off '
    "your list\"). Then tell them, in one short sentence, that we won't call them again.",
    arguments=arguments,
    handle=handle,
    offered=offered,
    limit=1,
    rule_without_model=rule,
    precedence=5,
)
