"""ANALYSIS_FILE: the fields post-call analysis pulls out of every call.

A YAML mapping of field name to type, one field per line:

    account_number: string
    wants_upgrade: boolean
    product: {enum: [fiber, dsl, mobile]}
    seats: integer
    callback_time: {type: string, description: when the caller wants to be called back}

Types: `string`, `boolean`, `number`, `integer`, or `{enum: [...]}` (strings). The long form
`{type: ..., description: ...}` (or `{enum: [...], description: ...}`) adds a hint for the model.
Names are lower-case letters, digits and `_`, starting with a letter; at most 30 fields, 50 values
per enum and 500 in all (OpenAI's strict mode takes no more in one schema). The file is checked at start,
and every problem is named on a line of its own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from app.records.messages import clean_text
from app.records.redact import redact, redact_labelled

TYPES = ("string", "boolean", "number", "integer")
MAX_FIELDS = 30
MAX_ENUM_VALUES = 50
MAX_ENUM_VALUES_IN_ALL = 500  # what OpenAI's strict mode takes in one schema
MAX_ENUM_CHARS = 60
MAX_DESCRIPTION_CHARS = 300
MAX_STRING_CHARS = 300  # a string value as kept
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str  # one of TYPES, or "enum"
    values: tuple[str, ...] = ()
    description: str | None = None

    def schema(self) -> dict[str, Any]:
        """The field in a strict JSON schema: its type, or null when the call does not say."""
        if self.type == "enum":
            schema: dict[str, Any] = {"type": ["string", "null"], "enum": [*self.values, None]}
        else:
            schema = {"type": [self.type, "null"]}
        if self.description:
            schema["description"] = self.description
        return schema

    def value(self, raw: object) -> str | bool | int | float | None:
        """`raw` as this field keeps it (strings cleaned and redacted; None for a number that reads as
        a secret after the field's name, such as a card or account number); ValueError when it does
        not fit."""
        if self.type == "boolean" and isinstance(raw, bool):
            return raw
        if self.type == "integer" and isinstance(raw, int) and not isinstance(raw, bool):
            return raw if redact_labelled(self.name, str(raw)) == str(raw) else None
        if self.type == "number" and isinstance(raw, int | float) and not isinstance(raw, bool):
            if math.isfinite(raw):
                return raw if redact_labelled(self.name, str(raw)) == str(raw) else None
        if self.type == "string" and isinstance(raw, str):
            text = redact(clean_text(raw, MAX_STRING_CHARS))
            if text:
                return text
        if self.type == "enum" and raw in self.values:
            return str(raw)
        raise ValueError(f"{self.name}: expected {self.described}, got {type(raw).__name__}")

    @property
    def described(self) -> str:
        return "one of " + ", ".join(self.values) if self.type == "enum" else f"a {self.type}"


def load_fields(path: Path) -> tuple[FieldSpec, ...]:
    """The fields of ANALYSIS_FILE; ValueError naming every problem, one per line."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path} cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    return parse_fields(data, str(path))


def parse_fields(data: object, where: str) -> tuple[FieldSpec, ...]:
    if data is None:
        return ()
    if not isinstance(data, dict):
        raise ValueError(f"{where} must map field names to types, e.g. `wants_upgrade: boolean`")
    fields: list[FieldSpec] = []
    problems: list[str] = []
    for name, definition in data.items():
        try:
            fields.append(_field(name, definition))
        except ValueError as exc:
            problems.append(str(exc))
    if len(data) > MAX_FIELDS:
        problems.append(f"{len(data)} fields: at most {MAX_FIELDS}")
    values = sum(len(spec.values) for spec in fields)
    if values > MAX_ENUM_VALUES_IN_ALL:
        problems.append(f"{values} enum values in all: at most {MAX_ENUM_VALUES_IN_ALL}")
    if problems:
        raise ValueError("\n    ".join([f"{where}:", *problems]))
    return tuple(fields)


def _field(name: object, definition: object) -> FieldSpec:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"field {name!r}: a name is lower-case letters, digits and _, starting with a letter")
    description = None
    if isinstance(definition, dict):
        unknown = set(definition) - {"type", "enum", "description"}
        if unknown:
            raise ValueError(f"field {name!r}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        description = definition.get("description")
        if description is not None and (not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS):
            raise ValueError(f"field {name!r}: description must be text of at most {MAX_DESCRIPTION_CHARS} characters")
        if "enum" in definition:
            if definition.get("type") not in (None, "string"):
                raise ValueError(f"field {name!r}: an enum is a list of strings (leave out `type`)")
            return FieldSpec(name, "enum", _enum(name, definition["enum"]), description)
        definition = definition.get("type")
    if definition not in TYPES:
        raise ValueError(f"field {name!r}: type {definition!r} is not one of {', '.join(TYPES)} or {{enum: [a, b]}}")
    return FieldSpec(name, str(definition), (), description)


def _enum(name: str, values: object) -> tuple[str, ...]:
    if not isinstance(values, list) or not values:
        raise ValueError(f"field {name!r}: enum must be a list of values, e.g. {{enum: [fiber, dsl, mobile]}}")
    if len(values) > MAX_ENUM_VALUES:
        raise ValueError(f"field {name!r}: at most {MAX_ENUM_VALUES} enum values")
    for value in values:
        if isinstance(value, bool):
            raise ValueError(f"field {name!r}: enum value {value} was read as a boolean: quote it ('yes', 'no')")
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_ENUM_CHARS:
            raise ValueError(f"field {name!r}: enum values are non-empty strings, at most {MAX_ENUM_CHARS} characters")
    if len(set(values)) != len(values):
        raise ValueError(f"field {name!r}: enum values repeat")
    return tuple(values)
