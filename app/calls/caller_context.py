"""What the caller lookup answered about a caller, as Switchboard keeps it.

The answer comes from outside (the business's CRM, or whatever CALLER_LOOKUP_URL reaches) and is
treated like any other outside text: at most 4 KB, a flat JSON object whose keys look like names
and whose values are strings, numbers or booleans; anything else is dropped. Strings become one
line of printable text, capped, and go through `redact`; a key that would be redacted is dropped,
and a bare number that reads as a secret after its key ("pin": 1234) is kept redacted. The model
gets the result as data about the caller (see `app.brain.prompt`), never as instructions, and the
greeting uses `name` only when it looks like a person's name.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from app.records.messages import clean_text
from app.records.redact import redact, redact_labelled

MAX_ANSWER_BYTES = 4096
MAX_FIELDS = 32
MAX_VALUE_CHARS = 500
MAX_NAME_CHARS = 60
MAX_NAME_WORDS = 5
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_ .-]{0,39}$")
# Letters, with the marks names use between them ("Mary-Jane O'Neil", "Dr. Ng"): nothing to read out but a name.
_NAME = re.compile(r"^[^\W\d_]+(?:[ '’.-]+[^\W\d_]+)*\.?$")
_LARGEST_NUMBER = 1e15

Value = str | int | float | bool


class AnswerRefused(ValueError):
    """The lookup's answer cannot be used at all; `reason` is the metrics label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class CallerContext:
    """The caller's data as kept: checked, capped and redacted."""

    fields: dict[str, Value]
    dropped: int = 0  # entries of the answer that were not kept

    @property
    def name(self) -> str | None:
        """The caller's name, if the answer has one fit to be said in a greeting."""
        value = self.fields.get("name")
        if not isinstance(value, str) or len(value) > MAX_NAME_CHARS or len(value.split()) > MAX_NAME_WORDS:
            return None
        return value if _NAME.match(value) else None


def parse_answer(body: bytes) -> CallerContext:
    """The lookup's JSON answer as kept; AnswerRefused when it is too large or not a JSON object."""
    if len(body) > MAX_ANSWER_BYTES:
        raise AnswerRefused("too_large", f"the answer is over {MAX_ANSWER_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise AnswerRefused("invalid", "the answer is not JSON") from None
    if not isinstance(data, dict):
        raise AnswerRefused("invalid", "the answer is not a JSON object")
    fields: dict[str, Value] = {}
    for key, raw in data.items():
        if len(fields) >= MAX_FIELDS or not _KEY.match(key) or redact(key) != key or key in fields:
            continue
        value = _value(key, raw)
        if value is not None:
            fields[key] = value
    return CallerContext(fields, len(data) - len(fields))


def _value(key: str, raw: Any) -> Value | None:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int | float):
        if not math.isfinite(raw) or abs(raw) >= _LARGEST_NUMBER:
            return None
        shown = redact_labelled(key, str(raw))  # a bare number is a secret by its key ("pin": 1234)
        return raw if shown == str(raw) else shown
    if isinstance(raw, str):
        return redact(clean_text(raw, MAX_VALUE_CHARS)) or None
    return None  # null, lists and objects: the answer is flat
