"""The gate every tool call goes through, offered to the model and decided by code.

The transcript and the retrieved documents can ask for anything; the model may propose anything.
Here every proposal is checked before anything happens: the tool must exist and be offered on this
call, its arguments must validate (pydantic, no extra fields; a department is one of the configured
names, and a number comes from configuration alone), and the call's limits must allow it. A
rejected call is logged, counted, and explained to the model in the tool result. What each tool is
and does is its own definition (`registry.TOOLS`); nothing here names one.

A tool acts only on the call its conversation is bound to (`CallTools` holds that binding; no
argument names a call). Actions on the call wait until the caller has heard the agent's line; a
keypad digit a tool claims acts at once, without the model. A turn the Speech Engine sends again
gets the effects of its first attempt instead of acting twice (`effects`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from app.brain.effects import TurnEffects, TurnKey
from app.brain.llm import ToolCall
from app.brain.tools.definition import ACTED, Outcome, Tool, describe, no
from app.brain.tools.registry import BY_NAME, CALL_LIMITS, TOOLS
from app.calls.control import CallControl, EndReason
from app.calls.registry import CallAction, CallRegistry, Claim, Line, LiveCall
from app.departments.directory import Directory
from app.observability import Metrics, mask_digits
from app.records.events import TransferResult
from app.records.store import RecordsStore
from app.settings import Settings
from app.telephony.call_actions import CallActions

log = logging.getLogger("switchboard.tools")

BIND_TIMEOUT_S = 2.0
EFFECTS_CLOSE_TIMEOUT_S = 5.0  # a conversation that ends lets its tool calls under way finish
_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")


def _schema(tool: Tool, model: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": _untitled(model.model_json_schema()),
        },
    }


def _untitled(schema: Any) -> Any:
    """Pydantic's JSON schema without its `title` entries: tokens the model does not need."""
    if isinstance(schema, dict):
        return {k: _untitled(v) for k, v in schema.items() if k != "title" or not isinstance(v, str)}
    if isinstance(schema, list):
        return [_untitled(v) for v in schema]
    return schema


class Toolbox:
    """The tools of one app: their argument models, the message store, Twilio actions, the keypad."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        registry: CallRegistry,
        actions: CallActions,
        records: RecordsStore | None,
        directory: Directory,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = registry
        self.actions = actions
        self.records = records
        self.directory = directory
        # The `x-call-sid` header says a call exists; the bridge may announce it a moment later.
        self.bind_timeout = BIND_TIMEOUT_S
        registry.executor = self.execute
        registry.limits = dict(CALL_LIMITS)
        self._built_for = -1
        self._models: dict[str, type[BaseModel]] = {}
        self._schemas: dict[str, dict[str, Any]] = {}
        self._specs: dict[tuple[str, ...], list[dict[str, Any]]] = {}

    @property
    def models(self) -> dict[str, type[BaseModel]]:
        """Each tool's argument model, for the departments in effect (rebuilt when they change)."""
        if self._built_for != self.directory.version:
            names = self.directory.names
            self._models = {tool.name: tool.arguments(names) for tool in TOOLS}
            self._schemas = {name: _schema(BY_NAME[name], model) for name, model in self._models.items()}
            self._specs = {}
            self._built_for = self.directory.version
        return self._models

    def conversation(self, call_sid: str | None) -> CallTools:
        """Tools for one brain conversation; `call_sid` from the `x-call-sid` header, if it looks like one."""
        return CallTools(self, call_sid if call_sid and _CALL_SID.fullmatch(call_sid) else None)

    def specs(self, offered: tuple[str, ...]) -> list[dict[str, Any]]:
        """The `tools` request field for these tools (built once per combination and departments)."""
        self.models  # noqa: B018 (brings the schemas up to date)
        specs = self._specs.get(offered)
        if specs is None:
            specs = self._specs[offered] = [self._schemas[name] for name in offered]
        return specs

    def count(self, tool: str, outcome: str) -> None:
        self.metrics.tool_calls.labels(tool if tool in BY_NAME else "unknown", outcome).inc()

    def transfer_result(self, call_sid: str, department: str, result: str) -> None:
        """A transfer's result on the call's record (closed, ringing, connected, no answer...)."""
        if self.records is not None:
            self.records.record(TransferResult(call_sid, department, result, datetime.now(UTC)))

    async def transfer(self, call: LiveCall, action: CallAction) -> None:
        """Put the call through to `action.department`. If Twilio refuses, end the stream as failed so
        the Connect action applies FALLBACK_NUMBER semantics (without one, the caller talks on)."""
        assert action.department is not None
        if await self.actions.transfer(call.call_sid, call.caller, action):
            self.transfer_result(call.call_sid, action.department, "ringing")
            return
        if self.settings.fallback_number and not call.ended:
            call.end(EndReason.INTERNAL_ERROR)

    async def hang_up(self, call: LiveCall) -> None:
        if not call.ended:
            call.end(EndReason.REQUESTED)
            self.metrics.call_actions.labels("end", "ended").inc()
            log.info("call ended by the agent", extra={"call_sid": call.call_sid})

    async def execute(self, call: LiveCall, action: CallAction) -> None:
        """Carry out an action on a call whose media stream is in this process (the registry's executor)."""
        if action.kind == "end":
            await self.hang_up(call)
        elif action.kind == "back":
            assert action.department is not None
            await self.actions.back_to_agent(call.call_sid, action.department, "closed")
        elif action.department in self.directory.departments:
            await self.transfer(call, action)

    # --- CallObserver: the keypad ------------------------------------------------------------

    async def call_started(self, call: CallControl) -> None:
        """Nothing to do: the registry keeps the call."""

    async def call_ended(self, call: CallControl) -> None:
        """Nothing to do: the registry cancels the call's pending work."""

    def dtmf(self, control: CallControl, digit: str) -> None:
        """A digit a tool answers to acts at once, without the model."""
        tool = next((t for t in TOOLS if t.key == digit and t.on_key is not None), None)
        if tool is None or tool.on_key is None:
            return
        call = self.registry.lookup(call_sid=control.call_sid)
        if call is None:
            self.count(tool.name, "keypad_refused")
            return
        # Claiming may ask the shared store: off the audio path, on the call's own task.
        self.registry.run_action(tool.on_key(self, call), f"keypad-{call.call_sid}")


class CallTools:
    """One brain conversation's tools: its call, what is offered this turn, and running tool calls."""

    def __init__(self, box: Toolbox, call_sid: str | None) -> None:
        self.box = box
        self.call_sid = call_sid
        self.conversation_id: str | None = None
        self.offered: tuple[str, ...] = ()
        self.labels: list[str] = []  # the outcome of each tool call of the last `run`
        self.unanswered: str | None = None  # the question this turn reported as unanswered
        self._acting: Tool | None = None  # this turn armed a tool that has a line of its own
        self._call: LiveCall | None = None
        self._waited = False
        self._line: Line | None = None
        self._used_without_call: Counter[str] = Counter()
        self._effects: TurnEffects[Outcome] = TurnEffects()

    @property
    def call(self) -> LiveCall | None:
        return self._call

    @property
    def line(self) -> Line | None:
        """Where this turn's audio starts, for an action that waits until the caller has heard it."""
        return self._line

    @property
    def known_call_sid(self) -> str | None:
        """The call this conversation is on, as far as it is known: bound, or named by the header."""
        return self._call.call_sid if self._call is not None else self.call_sid

    @property
    def armed_line(self) -> str | None:
        """What to say when this turn armed an action and the model said nothing (None: no action)."""
        return self._acting.armed_line if self._acting is not None else None

    def left(self, tool: str) -> bool:
        """The call (or, with no call, this conversation) has some of `tool`'s allowance left."""
        limit = BY_NAME[tool].limit
        if limit is None:
            return True
        used = self._call.used(tool) if self._call is not None else self._used_without_call[tool]
        return used < limit

    async def claim(self, tool: str) -> Claim:
        """Use one of `tool`'s allowance on the call (or this conversation, with no call)."""
        definition = BY_NAME[tool]
        if self._call is not None:
            return await self._call.claim(tool, definition.conflicts)
        if definition.limit is not None and self._used_without_call[tool] >= definition.limit:
            return "limit"
        self._used_without_call[tool] += 1
        return "accepted"

    async def begin_turn(self, turn: TurnKey) -> tuple[str, ...]:
        """Bind to the call if not yet bound, note where this turn's audio starts; returns the offer
        (for a turn sent again, what its first attempt was offered)."""
        call = await self._bind()
        self._effects.begin(turn)
        self._acting = None
        self.unanswered = None
        self._line = call.line() if call is not None else None
        if self._effects.offered is None:
            self._effects.offered = tuple(tool.name for tool in TOOLS if tool.offered(self, call))
        self.offered = self._effects.offered
        return self.offered

    def end_turn(self) -> None:
        """The turn's text has all gone out (or it was interrupted): its line can now be heard."""
        if self._line is not None:
            self._line.spoken.set()

    async def close(self) -> None:
        """The conversation is over: tool calls under way finish (a message is saved, a transfer armed)."""
        await self._effects.close(EFFECTS_CLOSE_TIMEOUT_S)

    async def _bind(self) -> LiveCall | None:
        if self._call is not None:
            return None if self._call.ended else self._call
        registry = self.box.registry
        if self.call_sid:
            # The header says a call exists: wait for the bridge to announce it, once.
            timeout = 0.0 if self._waited else self.box.bind_timeout
            self._waited = True
            self._call = await registry.find(call_sid=self.call_sid, timeout=timeout)
        elif self.conversation_id:
            # No header: bind only if the bridge saw the same conversation id (protocols.md D9),
            # on this replica or, with shared call state, on another.
            self._call = await registry.find(conversation_id=self.conversation_id)
        if self._call is not None:
            if self.conversation_id and self._call.conversation_id not in (None, self.conversation_id):
                log.info("brain and bridge conversation ids differ; bound by call SID", extra=self._extra())
            log.info("conversation bound to its call", extra=self._extra())
        return self._call

    def _extra(self) -> dict[str, Any]:
        return {"call_sid": self.known_call_sid}

    async def run(self, calls: Sequence[ToolCall]) -> list[str]:
        """Gate and run the model's tool calls in order; one result text per call."""
        results = []
        self.labels = []
        for call in calls:
            outcome = await self._run(call)
            self.labels.append(outcome.label)
            self.box.count(call.name, outcome.label)
            if outcome.label in ACTED:
                tool = BY_NAME[call.name]
                if tool.armed_line is not None:
                    self._acting = tool
                log.info("tool %s %s", call.name, outcome.label, extra=self._extra())
            else:
                log.warning(
                    "tool call %s rejected (%s): %s",
                    mask_digits(call.name[:64]),
                    outcome.label,
                    mask_digits(outcome.content),
                    extra=self._extra(),
                )
            results.append(outcome.content)
        return results

    async def _run(self, call: ToolCall) -> Outcome:
        tool = BY_NAME.get(call.name)
        if tool is None:
            return no("unknown_tool", "There is no such tool. Use only the tools you were given.")
        if call.name not in self.offered:
            return no("not_offered", "That tool is not available on this call right now.")
        if call.error:
            return no("invalid_arguments", call.error)
        try:
            args = self.box.models[call.name].model_validate_json(call.arguments or "{}")
        except ValidationError as exc:
            return no("invalid_arguments", describe(exc))
        if not tool.once_per_turn:
            return await tool.handle(self, args)
        outcome, repeated = await self._effects.once(call.name, lambda: tool.handle(self, args))
        return Outcome("repeated", outcome.content) if repeated else outcome
