"""The agent's tools: one module per tool, each one `Tool` definition (`definition`), listed in
`registry`, run through one gate (`box`)."""

from app.brain.tools.box import CallTools, Toolbox
from app.brain.tools.definition import ACTED, Tool
from app.brain.tools.registry import BY_NAME, CALL_LIMITS, TOOLS

__all__ = ["ACTED", "BY_NAME", "CALL_LIMITS", "TOOLS", "CallTools", "Tool", "Toolbox"]
