"""Scenario files: YAML read with the line of every key, checked against the format, refused with
the file and line of each mistake.

A file holds one scenario, or several as YAML documents separated by `---`. The format:

    name: autopay discount, then sales     # required, unique in the run
    caller: "+12125550123"                 # optional, E.164
    at: "2026-12-08T10:30:00-05:00"        # optional, ISO 8601 with its UTC offset
    xfail: "why it cannot pass yet"        # optional: reported, but expected to fail
    turns:
      - say: what the caller says
        expect: {says_any, says_all, not_says, sources, first_words_ms, tool, department, gap, message, judge}

Values are read from the text as written (a `caller` of +1212… stays a string, not a number).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from app.brain.tools import BY_NAME, end_call, transfer_call
from app.settings import E164

TOOLS = tuple(BY_NAME)
ENDS_CALL = (transfer_call.NAME, end_call.NAME)
_BOOL = "tag:yaml.org,2002:bool"
_NUMBER = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_TRUE = ("true", "yes", "on")
T = TypeVar("T")


@dataclass(frozen=True)
class MessageExpected:
    """A message taken with these fields (None: any value)."""

    name: str | None = None
    callback_number: str | None = None
    department: str | None = None


@dataclass(frozen=True)
class Expect:
    says_any: tuple[str, ...] = ()
    says_all: tuple[str, ...] = ()
    not_says: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    first_words_ms: float | None = None
    tool: str | None = None
    department: str | None = None
    gap: bool | None = None
    message: MessageExpected | None = None
    judge: str | None = None

    @property
    def ends_call(self) -> bool:
        return self.tool in ENDS_CALL or self.department is not None


@dataclass(frozen=True)
class Step:
    """One turn: what the caller says, and what must happen."""

    say: str
    expect: Expect
    line: int


@dataclass(frozen=True)
class Scenario:
    name: str
    file: Path
    line: int
    turns: tuple[Step, ...]
    caller: str | None = None
    at: datetime | None = None
    xfail: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class FileError:
    file: Path
    line: int
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)  # line 0: the file as a whole
        return f"{where}: {self.message}"


@dataclass
class Loaded:
    scenarios: list[Scenario] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)


class _Refused(Exception):
    def __init__(self, node: Node | int, message: str) -> None:
        super().__init__(message)
        self.line = node if isinstance(node, int) else node.start_mark.line + 1


def find(paths: Iterable[Path]) -> list[Path]:
    """The scenario files named, a directory standing for its *.yaml and *.yml files."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        else:
            found.append(path)
    return found


def load(files: Iterable[Path]) -> Loaded:
    """Every scenario in these files, or every mistake in them (file and line each)."""
    loaded = Loaded()
    names: dict[str, Scenario] = {}
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            loaded.errors.append(FileError(path, 0, f"cannot be read: {exc}"))
            continue
        try:
            documents = [doc for doc in yaml.compose_all(text, Loader=yaml.SafeLoader) if doc is not None]
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 0
            loaded.errors.append(FileError(path, line, f"not valid YAML: {exc.problem or exc.context}"))
            continue
        if not documents:
            loaded.errors.append(FileError(path, 1, "no scenario in this file"))
        for document in documents:
            errors: list[_Refused] = []
            scenario = _scenario(document, path, errors)
            loaded.errors += [FileError(path, e.line, str(e)) for e in errors]
            if scenario is None or errors:
                continue
            if scenario.name in names:
                first = names[scenario.name]
                loaded.errors.append(
                    FileError(path, scenario.line, f"the name {scenario.name!r} is already used at {first.where}")
                )
                continue
            names[scenario.name] = scenario
            loaded.scenarios.append(scenario)
    return loaded


# --- the format ------------------------------------------------------------------------------

_SCENARIO_KEYS = ("name", "caller", "at", "xfail", "turns")
_TURN_KEYS = ("say", "expect")
_EXPECT_KEYS = tuple(Expect.__dataclass_fields__)
_MESSAGE_KEYS = tuple(MessageExpected.__dataclass_fields__)


def _scenario(node: Node, path: Path, errors: list[_Refused]) -> Scenario | None:
    try:
        keys = _mapping(node, _SCENARIO_KEYS, "a scenario")
    except _Refused as exc:
        errors.append(exc)
        return None
    name = _field(keys, "name", _text, errors, required=node)
    caller = _field(keys, "caller", _caller, errors)
    at = _field(keys, "at", _time, errors)
    xfail = _field(keys, "xfail", _text, errors)
    turns = _field(keys, "turns", _turns, errors, required=node)
    if name is None or turns is None:
        return None
    return Scenario(name, path, node.start_mark.line + 1, turns, caller, at, xfail)


def _field(
    keys: dict[str, tuple[Node, Node]],
    key: str,
    read: Callable[[Node, str, list[_Refused]], T],
    errors: list[_Refused],
    required: Node | None = None,
) -> T | None:
    """The value of `key`, read by `read`; a mistake is noted (with its line) and gives None."""
    if key not in keys:
        if required is not None:
            errors.append(_Refused(required, f"`{key}` is missing"))
        return None
    value = keys[key][1]
    try:
        return read(value, key, errors)
    except _Refused as exc:
        errors.append(exc)
        return None


def _mapping(node: Node, allowed: tuple[str, ...], what: str) -> dict[str, tuple[Node, Node]]:
    if not isinstance(node, MappingNode):
        raise _Refused(node, f"{what} must be a mapping of keys ({', '.join(allowed)})")
    keys: dict[str, tuple[Node, Node]] = {}
    for key_node, value in node.value:
        key = key_node.value if isinstance(key_node, ScalarNode) else None
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else f" (known: {', '.join(allowed)})"
            raise _Refused(key_node, f"unknown key `{key}` in {what}{hint}")
        if key in keys:
            raise _Refused(key_node, f"`{key}` is given twice in {what}")
        keys[key] = (key_node, value)
    return keys


def _text(node: Node, key: str, errors: list[_Refused]) -> str:
    if not isinstance(node, ScalarNode) or node.tag.endswith(":null") or not node.value.strip():
        raise _Refused(node, f"`{key}` must be some text")
    return node.value.strip()


def _texts(node: Node, key: str, errors: list[_Refused]) -> tuple[str, ...]:
    if isinstance(node, ScalarNode):
        return (_text(node, key, errors),)
    if not isinstance(node, SequenceNode) or not node.value:
        raise _Refused(node, f'`{key}` must be a list of texts, like ["$5", "five dollars"]')
    return tuple(_text(item, key, errors) for item in node.value)


def _caller(node: Node, key: str, errors: list[_Refused]) -> str:
    number = _text(node, key, errors)
    if not E164.match(number):
        raise _Refused(node, f'`caller` {number!r} is not an E.164 number (write it like "+12125550123")')
    return number


def _time(node: Node, key: str, errors: list[_Refused]) -> datetime:
    text = _text(node, key, errors)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise _Refused(node, f'`at` {text!r} must be a time with its UTC offset, like "2026-12-08T10:30:00-05:00"')
    return at


def _turns(node: Node, key: str, errors: list[_Refused]) -> tuple[Step, ...] | None:
    if not isinstance(node, SequenceNode) or not node.value:
        raise _Refused(node, "`turns` must be a list of turns, each with `say` and optionally `expect`")
    steps: list[Step] = []
    for item in node.value:
        try:
            keys = _mapping(item, _TURN_KEYS, "a turn")
        except _Refused as exc:
            errors.append(exc)
            continue
        say = _field(keys, "say", _text, errors, required=item)
        expect = _field(keys, "expect", _expect, errors) if "expect" in keys else Expect()
        if say is not None and expect is not None:
            steps.append(Step(say, expect, item.start_mark.line + 1))
    if len(steps) != len(node.value):
        return None
    for step in steps[:-1]:
        if step.expect.ends_call:
            errors.append(_Refused(step.line, "a transfer or a goodbye ends the call: it can only be the last turn"))
    return tuple(steps)


def _expect(node: Node, key: str, errors: list[_Refused]) -> Expect:
    keys = _mapping(node, _EXPECT_KEYS, "`expect`")
    values: dict[str, Any] = {}
    for name, read in (
        ("says_any", _texts),
        ("says_all", _texts),
        ("not_says", _texts),
        ("sources", _texts),
        ("first_words_ms", _milliseconds),
        ("tool", _tool),
        ("department", _text),
        ("gap", _bool),
        ("message", _message),
        ("judge", _text),
    ):
        value = _field(keys, name, read, errors)
        if value is not None:
            values[name] = value
    return Expect(**values)


def _milliseconds(node: Node, key: str, errors: list[_Refused]) -> float:
    if not isinstance(node, ScalarNode) or node.tag not in _NUMBER or float(node.value) <= 0:
        raise _Refused(node, f"`{key}` must be a number of milliseconds, like 1500")
    return float(node.value)


def _tool(node: Node, key: str, errors: list[_Refused]) -> str:
    tool = _text(node, key, errors)
    if tool not in TOOLS:
        raise _Refused(node, f"`tool` {tool!r} is not one of the agent's tools ({', '.join(TOOLS)})")
    return tool


def _bool(node: Node, key: str, errors: list[_Refused]) -> bool:
    if not isinstance(node, ScalarNode) or node.tag != _BOOL:
        raise _Refused(node, f"`{key}` must be true or false")
    return node.value.lower() in _TRUE


def _message(node: Node, key: str, errors: list[_Refused]) -> MessageExpected:
    if isinstance(node, MappingNode) and not node.value:
        return MessageExpected()
    keys = _mapping(node, _MESSAGE_KEYS, "`message`")
    fields = {name: _field(keys, name, _text, errors) for name in keys}
    number = fields.get("callback_number")
    if number is not None and sum(c.isdigit() for c in number) < 7:
        raise _Refused(keys["callback_number"][1], f"`callback_number` {number!r} is not a phone number")
    return MessageExpected(**fields)
