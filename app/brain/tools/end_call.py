"""end_call: hang up once the caller has heard the goodbye. One per call; not after a transfer."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from app.brain.tools.definition import ANYTHING_ELSE, STRICT, Outcome, RuleTurn, Tool, ok, refused
from app.calls.registry import CallAction, LiveCall

if TYPE_CHECKING:
    from app.brain.tools.box import CallTools

NAME = "end_call"
TRANSFER = "transfer_call"

_GOODBYE = re.compile(r"\b(?:bye|goodbye|good bye|that's all|that is all|nothing else|hang up)\b", re.IGNORECASE)
_NOTHING_MORE = re.compile(
    r"^\W*(?:no|nope|that's it|that is it)(?:\W+(?:that's it|that is it|that's all|thanks|thank you))*\W*$", re.I
)


class EndArgs(BaseModel):
    model_config = STRICT
    reason: str = Field(min_length=1, max_length=200, description="Why the call is ending, in a few words.")


def arguments(departments: Sequence[str]) -> type[BaseModel]:
    return EndArgs


def offered(tools: CallTools, call: LiveCall | None) -> bool:
    return call is not None and not call.ended and not (call.used(TRANSFER) or call.used(NAME))


async def handle(tools: CallTools, args: EndArgs) -> Outcome:
    call = tools.call
    assert call is not None
    claimed = await tools.claim(NAME)
    if claimed != "accepted":
        return refused(claimed, "The call is already ending.")
    call.after_line(CallAction("end"), tools.line)
    return ok(
        "The call will end once the caller has heard you. If you have not said goodbye yet, say it in one "
        "short sentence now; otherwise say nothing more."
    )


async def rule(turn: RuleTurn) -> str | None:
    """Goodbye, or "no, that's it" to "anything else?"."""
    if not (_GOODBYE.search(turn.said) or (turn.step.endswith(ANYTHING_ELSE) and _NOTHING_MORE.search(turn.said))):
        return None
    if NAME in turn.offered:
        await turn.run(NAME, {"reason": "the caller said goodbye"})
    return f"Thank you for calling {turn.company}. Goodbye."


TOOL = Tool(
    name=NAME,
    description="End the call once the caller has nothing else. Say a short goodbye first; the line is closed once "
    "they have heard it. At most once per call.",
    rule=f"- {NAME}: only when the caller has said goodbye or has nothing else. Say a short goodbye first.",
    arguments=arguments,
    handle=handle,
    offered=offered,
    limit=1,
    conflicts=(TRANSFER,),
    armed_line="Thank you for calling. Goodbye.",
    rule_without_model=rule,
    precedence=30,
)
