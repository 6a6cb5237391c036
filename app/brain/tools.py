"""The agent's tools — transfer_call, end_call, take_message — offered to the model, decided by code.

The transcript and the retrieved documents can ask for anything; the model may propose anything.
Here every proposal is checked before anything happens: the tool must exist and be offered on this
call, its arguments must validate (pydantic, no extra fields; a department is a TRANSFER_TARGETS
name, and the number comes from settings alone), and the call's limits must allow it. A rejected
call is logged, counted, and explained to the model in the tool result.

A tool acts only on the call its conversation is bound to (`CallTools` holds that binding; no
argument names a call). Transfer and hang-up wait until the caller has heard the agent's line;
the keypad's `0` transfers to the first department at once, without the model. A turn the Speech
Engine sends again gets the effects of its first attempt instead of acting twice (`effects`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from app.brain.effects import TurnEffects, TurnKey
from app.brain.llm import ToolCall
from app.calls.control import CallControl, EndReason
from app.calls.registry import (
    CALL_LIMITS,
    END_TOOL,
    MESSAGE_TOOL,
    TRANSFER_TOOL,
    CallAction,
    CallRegistry,
    Claim,
    Line,
    LiveCall,
)
from app.observability import Metrics, mask_digits
from app.records.events import CallTransferred
from app.records.messages import MAX_MESSAGE_CHARS, MAX_NAME_CHARS, clean_text, normalise_number
from app.records.store import RecordsStore
from app.settings import Settings
from app.telephony.call_actions import CallActions

log = logging.getLogger("switchboard.tools")

# Not an action on the call: the model's way to say the documents did not answer (a knowledge gap).
GAP_TOOL = "report_unanswered_question"
TOOL_ORDER = (TRANSFER_TOOL, END_TOOL, MESSAGE_TOOL, GAP_TOOL)
MAX_QUESTION_CHARS = 300
# What the caller hears when the model armed a transfer or a hang-up but said nothing itself.
ACTION_LINES = {TRANSFER_TOOL: "I'll put you through now.", END_TOOL: "Thank you for calling. Goodbye."}
# Outcomes of a tool call that did what was asked: now, or in an earlier attempt at the same turn.
ACTED = frozenset({"accepted", "repeated"})
KEYPAD_DIGIT = "0"
BIND_TIMEOUT_S = 2.0
EFFECTS_CLOSE_TIMEOUT_S = 5.0  # a conversation that ends lets its tool calls under way finish
_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
_STRICT = ConfigDict(extra="forbid", str_strip_whitespace=True)


class EndArgs(BaseModel):
    model_config = _STRICT
    reason: str = Field(min_length=1, max_length=200, description="Why the call is ending, in a few words.")


class MessageArgs(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS, description="The caller's name.")
    callback_number: str | None = Field(
        None,
        max_length=40,
        description="The number to call back, as the caller said it. Omit it to use the number they are calling from.",
    )
    message: str = Field(
        min_length=1,
        max_length=8 * MAX_MESSAGE_CHARS,
        description=f"The message for the team, in the caller's words (up to {MAX_MESSAGE_CHARS} characters are kept).",
    )


class GapArgs(BaseModel):
    model_config = _STRICT
    question: str = Field(
        min_length=1, max_length=2 * MAX_QUESTION_CHARS, description="The caller's question, in a few words."
    )


def _transfer_args(departments: Sequence[str]) -> type[BaseModel]:
    """The argument model for this deployment: `department` is an enum of the configured names."""
    return create_model(
        "TransferArgs",
        __config__=_STRICT,
        department=(Literal[tuple(departments)], Field(description="The department to transfer the caller to.")),
    )


_DESCRIPTIONS = {
    TRANSFER_TOOL: "Transfer the caller to a colleague in one of the listed departments. First tell the caller in "
    "one short sentence that you are putting them through; the transfer happens once they have heard it. "
    "At most once per call.",
    END_TOOL: "End the call once the caller has nothing else. Say a short goodbye first; the line is closed once "
    "they have heard it. At most once per call.",
    MESSAGE_TOOL: "Save a message for the team: the caller's name, a callback number and the message. Read the "
    "number back to the caller before saving. At most three per call.",
    GAP_TOOL: "Report a question the passages do not answer, so the team can add it to the documents. Call it "
    "whenever you tell the caller you don't have that information; not for greetings, thanks or small talk.",
}


def _schema(name: str, model: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": _DESCRIPTIONS[name],
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


@dataclass(frozen=True)
class Outcome:
    """What one tool call came to: a metrics label and the text the model gets back."""

    label: str
    content: str

    @property
    def accepted(self) -> bool:
        return self.label == "accepted"


def _ok(text: str) -> Outcome:
    return Outcome("accepted", json.dumps({"ok": True, "result": text}))


def _no(label: str, text: str) -> Outcome:
    return Outcome(label, json.dumps({"ok": False, "error": text}))


def _refused(claimed: Claim, over_limit: str) -> Outcome:
    """The tool result for a claim that was not granted."""
    if claimed == "conflict":
        return _no("conflict", "The call is already being transferred or ended.")
    if claimed == "unavailable":
        return _no(
            "unavailable",
            "That cannot be done right now (a system the call depends on is not reachable). Tell the caller, and "
            "offer to take a message instead.",
        )
    return _no("limit", over_limit)


def _describe(exc: ValidationError) -> str:
    """Which argument was wrong and why, short, without echoing the input back."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:4]:
        where = ".".join(str(p) for p in error["loc"])[:40] or "arguments"
        parts.append(f"{where}: {error['msg'][:120]}")
    return "invalid arguments (" + "; ".join(parts) + ")"


class Toolbox:
    """The tools of one app: schemas, the message store, Twilio actions, and the keypad."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        registry: CallRegistry,
        actions: CallActions,
        records: RecordsStore | None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = registry
        self.actions = actions
        self.records = records
        # The `x-call-sid` header says a call exists; the bridge may announce it a moment later.
        self.bind_timeout = BIND_TIMEOUT_S
        self.models: dict[str, type[BaseModel]] = {END_TOOL: EndArgs, MESSAGE_TOOL: MessageArgs, GAP_TOOL: GapArgs}
        if actions.transfers:
            self.models[TRANSFER_TOOL] = _transfer_args(list(settings.transfer_targets))
        self._schemas = {name: _schema(name, model) for name, model in self.models.items()}
        registry.executor = self.execute
        self._specs: dict[tuple[str, ...], list[dict[str, Any]]] = {}

    def conversation(self, call_sid: str | None) -> CallTools:
        """Tools for one brain conversation; `call_sid` from the `x-call-sid` header, if it looks like one."""
        return CallTools(self, call_sid if call_sid and _CALL_SID.fullmatch(call_sid) else None)

    def specs(self, offered: tuple[str, ...]) -> list[dict[str, Any]]:
        """The `tools` request field for these tools (built once per combination)."""
        specs = self._specs.get(offered)
        if specs is None:
            specs = self._specs[offered] = [self._schemas[name] for name in offered]
        return specs

    def offer(self, call: LiveCall | None, messages_left: bool) -> tuple[str, ...]:
        """The tools whose prerequisites hold right now, in a fixed order."""
        offered = []
        if call is not None and not call.ended and not (call.used(TRANSFER_TOOL) or call.used(END_TOOL)):
            if TRANSFER_TOOL in self.models:
                offered.append(TRANSFER_TOOL)
            offered.append(END_TOOL)
        if self.records is not None and self.records.ready.is_set() and messages_left:
            offered.append(MESSAGE_TOOL)
        if self.records is not None and self.records.gaps:
            offered.append(GAP_TOOL)
        return tuple(offered)

    def count(self, tool: str, outcome: str) -> None:
        self.metrics.tool_calls.labels(tool if tool in TOOL_ORDER else "unknown", outcome).inc()

    async def transfer(self, call: LiveCall, department: str, say: str | None = None) -> None:
        """Redirect the call. If Twilio refuses, end the stream as failed so the Connect action
        applies FALLBACK_NUMBER semantics (without one, the caller keeps talking to the agent)."""
        if await self.actions.transfer(call.call_sid, department, say):
            if self.records is not None:
                self.records.record(CallTransferred(call.call_sid, department))
            return
        if self.settings.fallback_number and not call.ended:
            call.end(EndReason.INTERNAL_ERROR)

    async def hang_up(self, call: LiveCall) -> None:
        if not call.ended:
            call.end(EndReason.REQUESTED)
            self.metrics.call_actions.labels("end", "ended").inc()
            log.info("call ended by the agent", extra={"call_sid": call.call_sid})

    # --- CallObserver: the keypad ------------------------------------------------------------

    async def call_started(self, call: CallControl) -> None:
        """Nothing to do: the registry keeps the call."""

    async def call_ended(self, call: CallControl) -> None:
        """Nothing to do: the registry cancels the call's pending work."""

    def dtmf(self, control: CallControl, digit: str) -> None:
        """`0` asks for a person: the first department in TRANSFER_TARGETS, at once, without the model."""
        if digit != KEYPAD_DIGIT or TRANSFER_TOOL not in self.models:
            return
        call = self.registry.lookup(call_sid=control.call_sid)
        if call is None:
            self.count(TRANSFER_TOOL, "keypad_refused")
            return
        # Claiming may ask the shared store: off the audio path, on the call's own task.
        self.registry.run_action(self._keypad(call), f"keypad-{call.call_sid}")

    async def _keypad(self, call: LiveCall) -> None:
        claimed = await call.claim(TRANSFER_TOOL, conflicts=(END_TOOL,))
        if claimed != "accepted":
            self.count(TRANSFER_TOOL, "keypad_refused" if claimed != "unavailable" else "unavailable")
            return
        department = next(iter(self.settings.transfer_targets))
        self.count(TRANSFER_TOOL, "keypad")
        log.info("keypad 0: transferring to %s", department, extra={"call_sid": call.call_sid})
        call.after_line(CallAction("transfer", department, f"Connecting you to {department} now."), None)

    async def execute(self, call: LiveCall, action: CallAction) -> None:
        """Carry out an action on a call whose media stream is in this process (the registry's executor)."""
        if action.kind == "end":
            await self.hang_up(call)
        elif action.department in self.settings.transfer_targets:
            await self.transfer(call, action.department, action.say)


class CallTools:
    """One brain conversation's tools: its call, what is offered this turn, and running tool calls."""

    def __init__(self, box: Toolbox, call_sid: str | None) -> None:
        self.box = box
        self.call_sid = call_sid
        self.conversation_id: str | None = None
        self.offered: tuple[str, ...] = ()
        self.labels: list[str] = []  # the outcome of each tool call of the last `run`
        self.unanswered: str | None = None  # the question this turn reported as unanswered
        self._acting: str | None = None  # this turn armed a transfer or a hang-up
        self._call: LiveCall | None = None
        self._waited = False
        self._line: Line | None = None
        self._messages_without_call = 0
        self._effects: TurnEffects[Outcome] = TurnEffects()

    @property
    def call(self) -> LiveCall | None:
        return self._call

    @property
    def known_call_sid(self) -> str | None:
        """The call this conversation is on, as far as it is known: bound, or named by the header."""
        return self._call.call_sid if self._call is not None else self.call_sid

    @property
    def line(self) -> str | None:
        """What to say when this turn armed an action and the model said nothing (None: no action)."""
        return ACTION_LINES[self._acting] if self._acting else None

    async def begin_turn(self, turn: TurnKey) -> tuple[str, ...]:
        """Bind to the call if not yet bound, note where this turn's audio starts; returns the offer
        (for a turn sent again, what its first attempt was offered)."""
        call = await self._bind()
        self._effects.begin(turn)
        self._acting = None
        self.unanswered = None
        self._line = call.line() if call is not None else None
        if self._effects.offered is None:
            messages_left = (
                call.used(MESSAGE_TOOL) < CALL_LIMITS[MESSAGE_TOOL]
                if call is not None
                else self._messages_without_call < CALL_LIMITS[MESSAGE_TOOL]
            )
            self._effects.offered = self.box.offer(call, messages_left)
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
                if call.name in ACTION_LINES:
                    self._acting = call.name
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
        model = self.box.models.get(call.name)
        if model is None:
            return _no("unknown_tool", "There is no such tool. Use only the tools you were given.")
        if call.name not in self.offered:
            return _no("not_offered", "That tool is not available on this call right now.")
        if call.error:
            return _no("invalid_arguments", call.error)
        try:
            args = model.model_validate_json(call.arguments or "{}")
        except ValidationError as exc:
            return _no("invalid_arguments", _describe(exc))
        if call.name == GAP_TOOL:  # notes this attempt's question in its own record: nothing to do twice
            return self._gap(args.question)  # type: ignore[attr-defined]
        outcome, repeated = await self._effects.once(call.name, lambda: self._act(call.name, args))
        return Outcome("repeated", outcome.content) if repeated else outcome

    async def _act(self, name: str, args: BaseModel) -> Outcome:
        if name == TRANSFER_TOOL:
            return await self._transfer(args.department)  # type: ignore[attr-defined]
        if name == END_TOOL:
            return await self._end()
        return await self._message(args)  # type: ignore[arg-type]

    def _gap(self, question: str) -> Outcome:
        if self.unanswered is not None:
            return _no("limit", "Already reported for this question.")
        self.unanswered = clean_text(question, MAX_QUESTION_CHARS)
        return _ok(
            "Noted for the team. If you have not told the caller yet, say in one short sentence that you don't have "
            "that information and offer to take a message or to transfer them; otherwise say nothing more."
        )

    async def _transfer(self, department: str) -> Outcome:
        call = self._call
        assert call is not None
        claimed = await call.claim(TRANSFER_TOOL, conflicts=(END_TOOL,))
        if claimed != "accepted":
            return _refused(claimed, "The caller has already been transferred once on this call.")
        call.after_line(CallAction("transfer", department), self._line)
        return _ok(
            f"The caller will be transferred to {department} as soon as they have heard you. If you have not told "
            "them yet, say so in one short sentence now; otherwise say nothing more."
        )

    async def _end(self) -> Outcome:
        call = self._call
        assert call is not None
        claimed = await call.claim(END_TOOL, conflicts=(TRANSFER_TOOL,))
        if claimed != "accepted":
            return _refused(claimed, "The call is already ending.")
        call.after_line(CallAction("end"), self._line)
        return _ok(
            "The call will end once the caller has heard you. If you have not said goodbye yet, say it in one "
            "short sentence now; otherwise say nothing more."
        )

    async def _message(self, args: MessageArgs) -> Outcome:
        assert self.box.records is not None
        store = self.box.records.messages
        call = self._call
        name = clean_text(args.name, MAX_NAME_CHARS)
        text = clean_text(args.message, MAX_MESSAGE_CHARS)
        if not name or not text:
            return _no("invalid_arguments", "The name and the message must not be empty.")
        said = args.callback_number or (call.caller if call is not None else "")
        number = normalise_number(said) if said else None
        if number is None:
            if args.callback_number:
                return _no("invalid_number", "That callback number is not a valid phone number. Ask the caller again.")
            return _no("invalid_number", "Ask the caller for a callback number.")
        if call is not None:
            claimed = await call.claim(MESSAGE_TOOL)
            if claimed != "accepted":
                return _refused(claimed, "Three messages have already been taken on this call; no more can be saved.")
        elif self._messages_without_call >= CALL_LIMITS[MESSAGE_TOOL]:
            return _no("limit", "Three messages have already been taken in this conversation.")
        else:
            self._messages_without_call += 1
        try:
            # Committed before the model hears back, so a hang-up right after loses nothing.
            saved = await store.add(
                name=name,
                callback_number=number,
                message=text,
                call_sid=call.call_sid if call is not None else None,
                caller=call.caller if call is not None else None,
                conversation_id=self.conversation_id,
            )
        except Exception:
            log.exception("message could not be saved", extra=self._extra())
            return _no("failed", "The message could not be saved. Apologise and offer to transfer the caller.")
        log.info("message %d saved", saved.id, extra=self._extra())
        kept = "" if len(args.message) <= MAX_MESSAGE_CHARS else f" (shortened to {MAX_MESSAGE_CHARS} characters)"
        return _ok(f"Message saved{kept}. The team will call back on {number}.")
