"""A scenario's expectations against what happened on its call: each one passed, failed or skipped,
with what was expected and what the agent said or did instead."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from app.brain.tools import ACTED
from app.departments.directory import Directory
from app.records.messages import normalise_number
from app.testing.scenarios.files import MessageExpected, Scenario
from app.testing.scenarios.runner import CallSeen, TurnSeen

Verdict = Literal["passed", "failed", "skipped"]
Status = Literal["passed", "failed", "skipped", "error", "xfailed", "xpassed"]


@dataclass(frozen=True)
class Check:
    turn: int  # from 1
    what: str  # the expectation's key
    verdict: Verdict
    expected: str
    got: str

    def to_json(self) -> dict[str, Any]:
        return {
            "turn": self.turn,
            "expect": self.what,
            "verdict": self.verdict,
            "expected": self.expected,
            "got": self.got,
        }


@dataclass
class ScenarioResult:
    scenario: Scenario
    call: CallSeen
    checks: list[Check] = field(default_factory=list)

    @property
    def status(self) -> Status:
        verdicts = {check.verdict for check in self.checks}
        if self.call.error is not None:
            status: Status = "error"
        elif "failed" in verdicts:
            status = "failed"
        elif verdicts == {"skipped"}:
            status = "skipped"  # nothing could be checked (a judge, with no model)
        else:
            status = "passed"
        if self.scenario.xfail is not None:
            return "xfailed" if status in ("failed", "error") else "xpassed"
        return status

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if check.verdict == "failed"]


NO_TIMING = "skipped: --no-timing"


def check(scenario: Scenario, call: CallSeen, company: Directory, timing: bool = True) -> ScenarioResult:
    """Every expectation but `judge` (a model scores those: `judge.py`), in the format's order;
    without `timing`, `first_words_ms` is skipped (a machine too busy to time a call fairly)."""
    result = ScenarioResult(scenario, call)
    for number, step in enumerate(scenario.turns, 1):
        turn = call.turns[number - 1] if number <= len(call.turns) else None
        for key, value in vars(step.expect).items():
            if value is None or value == () or key == "judge":
                continue
            expected = _EXPECTED[key](value)
            if key == "first_words_ms" and not timing:
                result.checks.append(Check(number, key, "skipped", expected, NO_TIMING))
                continue
            if turn is None:
                got = f"the call failed: {call.error}" if call.error else f"this turn never came: {call.ending}"
                result.checks.append(Check(number, key, "failed", expected, got))
                continue
            passed, got = _VERDICTS[key](value, turn, call, company)
            result.checks.append(Check(number, key, "passed" if passed else "failed", expected, got))
    return result


def _says_any(wanted: tuple[str, ...], turn: TurnSeen, call: CallSeen, company: Directory) -> tuple[bool, str]:
    return any(_says(turn, w) for w in wanted), _said(turn)


def _says_all(wanted: tuple[str, ...], turn: TurnSeen, call: CallSeen, company: Directory) -> tuple[bool, str]:
    missing = [w for w in wanted if not _says(turn, w)]
    return not missing, _said(turn) + (f" (missing {_list(missing)})" if missing else "")


def _not_says(unwanted: tuple[str, ...], turn: TurnSeen, call: CallSeen, company: Directory) -> tuple[bool, str]:
    return not any(_says(turn, w) for w in unwanted), _said(turn)


def _sources(wanted: tuple[str, ...], turn: TurnSeen, call: CallSeen, company: Directory) -> tuple[bool, str]:
    return all(s in turn.sources for s in wanted), f"it read {_list(turn.sources) if turn.sources else 'nothing'}"


def _first_words(limit: float, turn: TurnSeen, call: CallSeen, company: Directory) -> tuple[bool, str]:
    if turn.first_words_ms is None:
        return False, "the agent said nothing"
    return turn.first_words_ms <= limit, f"first words after {turn.first_words_ms:.0f} ms"


def _tool(tool: str, turn: TurnSeen, call: CallSeen, company: Directory) -> tuple[bool, str]:
    done = any(t.get("tool") == tool and t.get("decision") in ACTED for t in turn.tools)
    asked = ", ".join(f"{t.get('tool')} ({t.get('decision')})" for t in turn.tools)
    return done, f"tools: {asked}" if asked else "no tool"


def _department(department: str, turn: TurnSeen, call: CallSeen, company: Directory) -> tuple[bool, str]:
    """Twilio was told to dial the department's number (the REST redirect's TwiML), and the call's
    record says it was handed to that department (a warm transfer is still ringing when the call's
    stream ends, so the record need not say yet how it went)."""
    sent = call.transfer
    if sent is None:
        return False, f"not transferred ({call.ending})"
    known = company.get(department)
    right = sent["department"] == department and call.recorded_transfer == department
    if known is not None:
        right = right and sent["number"] == known.number
    recorded = (
        f"the call's record says it was handed to {call.recorded_transfer}"
        if call.recorded_transfer
        else f"the call's record says no transfer (it ended {call.recorded_end or 'without an end'})"
    )
    return right, f"Twilio was told to dial {sent['department'] or '?'} ({sent['number']}); {recorded}"


def _gap(gap: bool, turn: TurnSeen, call: CallSeen, company: Directory) -> tuple[bool, str]:
    return turn.gap == gap, "a knowledge gap was recorded" if turn.gap else "no knowledge gap was recorded"


def _message(expected: MessageExpected, turn: TurnSeen, call: CallSeen, company: Directory) -> tuple[bool, str]:
    if not turn.messages:
        return False, "no message was saved in this turn"
    saved = "; ".join(", ".join(f"{name} {value!r}" for name, value in m.items()) for m in turn.messages)
    return any(_matches(message, expected) for message in turn.messages), f"saved: {saved}"


def _message_wanted(expected: MessageExpected) -> str:
    fields = [f"{name} {value!r}" for name, value in vars(expected).items() if value is not None]
    return "a message taken" + (f" with {', '.join(fields)}" if fields else "")


_EXPECTED: dict[str, Callable[[Any], str]] = {
    "says_any": lambda wanted: f"says one of {_list(wanted)}",
    "says_all": lambda wanted: f"says all of {_list(wanted)}",
    "not_says": lambda unwanted: f"says none of {_list(unwanted)}",
    "sources": lambda sources: f"reads {_list(sources)}",
    "first_words_ms": lambda limit: f"first words within {limit:.0f} ms",
    "tool": lambda tool: f"{tool} done",
    "department": lambda department: f"transferred to {department}",
    "gap": lambda gap: "a knowledge gap recorded" if gap else "no knowledge gap",
    "message": _message_wanted,
}
_VERDICTS: dict[str, Callable[[Any, TurnSeen, CallSeen, Directory], tuple[bool, str]]] = {
    "says_any": _says_any,
    "says_all": _says_all,
    "not_says": _not_says,
    "sources": _sources,
    "first_words_ms": _first_words,
    "tool": _tool,
    "department": _department,
    "gap": _gap,
    "message": _message,
}


def _said(turn: TurnSeen) -> str:
    return f'the agent said "{turn.agent}"' if turn.agent else "the agent said nothing"


def _fold(text: str) -> str:
    return " ".join(text.replace("’", "'").casefold().split())


def _says(turn: TurnSeen, words: str) -> bool:
    return _fold(words) in _fold(turn.agent)


def _list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def _matches(message: dict[str, Any], expected: MessageExpected) -> bool:
    if expected.name is not None and _fold(expected.name) != _fold(message["name"]):
        return False
    if expected.callback_number is not None:
        wanted = normalise_number(expected.callback_number) or expected.callback_number
        if wanted != message["callback_number"]:
            return False
    if expected.department is not None:
        return _fold(expected.department) == _fold(message.get("department") or "")
    return True
