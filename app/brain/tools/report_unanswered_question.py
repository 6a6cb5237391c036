"""report_unanswered_question: not an action on the call, the model's way to say the documents did
not answer (a knowledge gap for the team). Noted in this attempt's own turn record, so a turn sent
again has nothing to do twice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from app.brain.tools.definition import STRICT, Outcome, Tool, no, ok
from app.calls.registry import LiveCall
from app.records.messages import clean_text

if TYPE_CHECKING:
    from app.brain.tools.box import CallTools

NAME = "report_unanswered_question"
MAX_QUESTION_CHARS = 300


class GapArgs(BaseModel):
    model_config = STRICT
    question: str = Field(
        min_length=1, max_length=2 * MAX_QUESTION_CHARS, description="The caller's question, in a few words."
    )


def arguments(departments: Sequence[str]) -> type[BaseModel]:
    return GapArgs


def offered(tools: CallTools, call: LiveCall | None) -> bool:
    records = tools.box.records
    return records is not None and records.gaps


async def handle(tools: CallTools, args: GapArgs) -> Outcome:
    if tools.unanswered is not None:
        return no("limit", "Already reported for this question.")
    tools.unanswered = clean_text(args.question, MAX_QUESTION_CHARS)
    return ok(
        "Noted for the team. If you have not told the caller yet, say in one short sentence that you don't have "
        "that information and offer to take a message or to transfer them; otherwise say nothing more."
    )


TOOL = Tool(
    name=NAME,
    description="Report a question the passages do not answer, so the team can add it to the documents. Call it "
    "whenever you tell the caller you don't have that information; not for greetings, thanks or small talk.",
    rule=f"- {NAME}: whenever the passages do not answer what the caller asked and you tell them so, report the "
    "question (in a few words), in the same reply. Never for greetings, thanks or small talk.",
    arguments=arguments,
    handle=handle,
    offered=offered,
    once_per_turn=False,
    needs_reply=False,
)
