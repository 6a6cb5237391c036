"""The tools, in the order they are offered: adding a tool is adding its module's `TOOL` here."""

from __future__ import annotations

from collections.abc import Mapping

from app.brain.tools import do_not_call, end_call, report_unanswered_question, take_message, transfer_call
from app.brain.tools.definition import Tool

TOOLS: tuple[Tool, ...] = (
    transfer_call.TOOL,
    end_call.TOOL,
    take_message.TOOL,
    report_unanswered_question.TOOL,
    do_not_call.TOOL,
)
BY_NAME: Mapping[str, Tool] = {tool.name: tool for tool in TOOLS}
# Per call, however they are asked for (model, rules, keypad), on every replica.
CALL_LIMITS: Mapping[str, int] = {tool.name: tool.limit for tool in TOOLS if tool.limit is not None}
