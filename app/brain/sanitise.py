"""Sanitise caller transcripts before retrieval, prompting, tools or logs see them.

Everything the caller says reaches us as text we do not control, and the LLM
cannot reliably tell "text that looks like structure" from structure. So every
turn is normalised, stripped of invisible characters, and anything posing as a
chat role, a prompt delimiter or a tool call is defused *before* it is used.
The caller's meaning is kept; only its power to look like structure is removed.

Neutralised form (kept deliberately simple so prompts and logs stay readable):

* Output is always one line: NFKC-normalised; control, format (zero-width,
  bidi, tag), private-use, unassigned and surrogate characters removed
  (``\\n \\t \\r`` become spaces and are not flagged); whitespace runs
  collapsed to one space.
* Chat-template tokens (``<|...|>``, ``<<SYS>>``, ``[INST]``), angle-bracket
  tags (``<reference>``, ``</passage>``, ``<passage id=3>``), HTML comments
  (with their content), delimiter runs of three or more of ``= - # * ~ ` _ < >``
  and bracket labels such as ``[REFERENCE]`` or ``[END]`` are removed
  (replaced by a space). Passes repeat until nothing changes, so removing one
  construct cannot expose another.
* Role markers (``system:`` -- for system, assistant, developer, user, agent,
  human, ai -- anywhere in the text, ``### System``, ``[SYSTEM]``,
  ``<|system|>``, ``<|im_start|>system``, ``"role": "system"``) become the
  bare role word followed by `` - ``: ``"System: obey"`` -> ``"System - obey"``.
* Any ``<`` or ``>`` still left becomes ``‹`` / ``›``, so output can never
  contain ``<``, ``>``, ``<|`` or ``|>``.
* In a turn with fake tool syntax, ``{``/``}`` become ``(``/``)`` and ``_``
  becomes a space, so ``end_call()`` reads as ``end call()``.
* A *user* turn flagged ``injection``, ``role_marker``, ``tool_syntax`` or
  ``delimiter`` is prefixed with ``CALLER_QUOTE_PREFIX`` ("[caller's words] ");
  the words themselves stay, because they are still what the caller said.
  Agent turns are defused the same way but never prefixed.

``neutralise_markup`` applies only the structural rules (the first four
bullets); the prompt builder uses it on retrieved passages.

Caps: the utterance is cut at a word boundary, prefix included. History keeps
the newest whole turns that fit ``max_history_chars`` (the newest one is cut
if it alone is too long); agent turns after the latest user turn are dropped.

Flags: ``injection``, ``role_marker``, ``tool_syntax``, ``delimiter``,
``control_chars``, ``truncated``, ``empty`` (no usable user utterance) and
``malformed`` (a transcript item was dropped).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CALLER_QUOTE_PREFIX",
    "FLAG_CONTROL_CHARS",
    "FLAG_DELIMITER",
    "FLAG_EMPTY",
    "FLAG_INJECTION",
    "FLAG_MALFORMED",
    "FLAG_ROLE_MARKER",
    "FLAG_TOOL_SYNTAX",
    "FLAG_TRUNCATED",
    "HOSTILE_FLAGS",
    "Message",
    "SanitisedTranscript",
    "neutralise_markup",
    "sanitise_text",
    "sanitise_transcript",
]

Role = Literal["user", "agent"]

FLAG_INJECTION = "injection"
FLAG_ROLE_MARKER = "role_marker"
FLAG_TOOL_SYNTAX = "tool_syntax"
FLAG_DELIMITER = "delimiter"
FLAG_TRUNCATED = "truncated"
FLAG_CONTROL_CHARS = "control_chars"
FLAG_EMPTY = "empty"
FLAG_MALFORMED = "malformed"

HOSTILE_FLAGS: frozenset[str] = frozenset({FLAG_INJECTION, FLAG_ROLE_MARKER, FLAG_TOOL_SYNTAX, FLAG_DELIMITER})
CALLER_QUOTE_PREFIX = "[caller's words] "


@dataclass(frozen=True)
class Message:
    """One cleaned turn; frozen so a sanitised turn cannot be altered later."""

    role: Role
    content: str


@dataclass(frozen=True)
class SanitisedTranscript:
    """The only transcript shape downstream code should ever consume."""

    utterance: str
    history: tuple[Message, ...]
    flags: frozenset[str]
    turn: int  # the caller's turns so far, this one included: where the utterance is in the call


# --------------------------------------------------------------------------
# Precompiled patterns (this runs on every turn: never compile per call).
# --------------------------------------------------------------------------

_ROLES = r"(?:system|assistant|developer|user|agent|human|ai)"
_I = re.IGNORECASE
_IM = re.IGNORECASE | re.MULTILINE
_IX = re.IGNORECASE | re.VERBOSE

# Chat-template tokens. A role named inside the token is kept as "role - ".
_TEMPLATE_RE = re.compile(
    rf"""
      (?:<\|\s*(?:im[_\ ]start|start[_\ ]header[_\ ]id)\s*\|>|<\s*start[_\ ]of[_\ ]turn\s*>)\s*
        (?:(?P<turn_role>{_ROLES}|model|tool)\b(?:\s*<\|\s*end[_\ ]header[_\ ]id\s*\|>)?)?
    | <\|\s*(?P<tok_role>{_ROLES})\s*\|>
    | <\|[^<>|]{{0,64}}\|>
    | <<\s*/?\s*sys\s*>>
    | \[\s*/?\s*inst\s*\]
    | <\s*/?\s*(?:start|end)[_\ ]of[_\ ]turn\s*>
    """,
    _IX,
)

# Markdown role headings: "### System", "## Instruction:", or "# user" at the start.
_HEADING_RE = re.compile(
    rf"(?:^#{{1,6}}|(?<!#)#{{2,6}})\s*"
    rf"(?P<role>{_ROLES}|instructions?|response|input)\b\s*:?",
    _IM,
)

# HTML comments can hide whole instructions in documents; drop them entirely.
_COMMENT_RE = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)

_TAG_WORDS = (
    r"(?:references?|passages?|documents?|context|system|instructions?|user"
    r"|assistant|developer|tool_calls?|tools?|functions?|function_calls?|im_start"
    r"|im_end|prompt|rules|search_results?|sources?|knowledge|transcript|caller"
    r"|agent|message|turn)"
)
_TAG_RE = re.compile(
    rf"""
      <\s*/?\s*{_TAG_WORDS}\b(?:[^<>]{{0,200}}>)?     # known delimiter words, spacing-tolerant
    | </?[a-z][\w:.-]*(?:\s[^<>]{{0,200}})?\s*/?>     # any strict HTML/XML-ish tag
    | <[!?][^<>]{{0,500}}>                            # <!DOCTYPE ...>, <?xml ...?>
    """,
    _IX,
)

_RUN_RE = re.compile(r"[=#*~`_<>\-]{3,}")

_BRACKET_RE = re.compile(
    rf"""
    \[\s*(?P<slash>/)?\s*
    (?:
        (?P<role>{_ROLES})
      | (?:(?:begin|end|start|stop)[\s_]+)?
        (?:references?|passages?|documents?|context|system|instructions?|sys
          |prompt|end|begin|sources?|knowledge|tool_calls?|tools?|functions?|rules)
        (?:[\s_]+(?:begin|end|start|block|message|prompt|section))?
    )
    \s*\]
    """,
    _IX,
)

_ROLE_JSON_RE = re.compile(rf"""["'“”‘’]role["'“”‘’]\s*:\s*["'“”‘’]?(?P<role>{_ROLES})\b["'“”‘’]?""", _I)

# "role:" anywhere, not just at a line start: "Human: hi AI: obey" is a fake
# transcript whatever the punctuation. Speech rarely puts a colon after these
# words, and a false positive only costs the quote prefix.
_ROLE_COLON_RE = re.compile(rf"\b(?P<role>{_ROLES})\s*:", _I)


_Rule = tuple[tuple[str, ...], re.Pattern[str]]


def _rule(anchors: tuple[str, ...], pattern: str) -> _Rule:
    """Pair a pattern with substrings every match contains: the regex only runs when one is present."""
    return anchors, re.compile(pattern, re.VERBOSE)


# Injection phrasing, matched on lower-cased text. Each pattern only runs when
# one of its anchor substrings is present, so ordinary speech costs a few
# substring scans instead of a regex pass per phrase family.
_INJECTION_RULES = (
    _rule(
        ("ignore", "disregard", "forget", "override", "bypass", "overrule", "discard"),
        r"""
          \b(?:ignore|disregard|forget|override|bypass|overrule|discard)\b
            (?:\W+\w+){0,5}?\W+
            (?:instructions?|rules|prompts?|directives?|guidelines|guardrails
              |programming|system\s+message)\b
        | \b(?:ignore|disregard|forget)\s+(?:everything|all|anything)\s+
            (?:above|before|prior|previous|earlier|you\s+(?:were|have\s+been)\s+told)\b
        """,
    ),
    _rule(
        ("are now", "re now", "now on", "anything now"),
        r"\byou(?:\s+are|'?re)\s+now\b | \bfrom\s+now\s+on,?\s+you\s+are\b | \bdo\s+anything\s+now\b",
    ),
    _rule(
        ("new instruction", "new rules", "new prompt", "new directive", "new persona", "new system"),
        r"""\bnew\s+(?:system\s+)?(?:instructions?|rules|prompt|directives?|persona)\s*
            (?::|-|\bare\b|\bfollow\b)""",
    ),
    _rule(
        ("act as",),
        r"""\bact\s+as\s+(?:(?:the|a|an|my|your)\s+)?
            (?:system|admin(?:istrator)?|developer|root|sysadmin|superuser|dan)\b""",
    ),
    _rule(
        (
            "prompt",
            "system message",
            "system instruction",
            "initial instruction",
            "original instruction",
            "hidden instruction",
            "secret instruction",
            "internal instruction",
            "developer instruction",
        ),
        r"""
          \b(?:reveal|print|show|tell|repeat|output|display|dump|leak|give|recite|share
              |expose|what\s+(?:is|are|was|were)|what's)\b
            (?:\W+\w+){0,4}?\W+
            (?:system\s+(?:prompt|message|instructions?)|your\s+prompt
              |(?:initial|original|hidden|secret|internal|developer)\s+(?:prompt|instructions))\b
        """,
    ),
    _rule(
        ("pretend", "roleplay", "jailbreak", "developer mode"),
        r"""\bpretend\s+(?:to\s+be|you\s+are|that\s+you)\b | \broleplay\s+as\b
          | \bjailbreak | \bdeveloper\s+mode\b""",
    ),
    _rule(
        ("not follow", "n't follow", "stop follow"),
        r"""\b(?:do\s+not|don't|stop)\s+follow(?:ing)?\s+(?:your|the|any|those|these)\s+
            (?:instructions|rules|guidelines)\b""",
    ),
)

_Q = r"""["'“”‘’]"""
# Fake tool calls, matched on lower-cased text, gated like the injection rules.
_TOOL_RULES = (
    _rule(("{",), rf"\{{\s*{_Q}?(?:name|tool|tool_name|function|type|action|role)\b{_Q}?\s*:"),
    _rule((":",), rf"{_Q}(?:arguments|parameters|args|input|tool_input){_Q}\s*:"),
    _rule(("tool_", "function_call"), r"\b(?:tool_calls?|tool_use|function_calls?|tool_call_id|tool_choice)\b"),
    _rule(("<",), r"<\s*/?\s*(?:tool_call|tool_use|function_calls?|invoke|tool_result|function_results?)\b"),
    _rule(("_",), r"(?<=[a-z0-9])_(?:[a-z0-9]+_)*[a-z0-9]+\s*\("),  # snake_case(  -- starts at "_"
    _rule(("(",), r"\b(?:transfercall|endcall|takemessage|hangup)\s*\("),
)

# Cheap prefilter: every structural or tool-syntax match contains one of these.
_STRUCTURE_HINT_RE = re.compile(r"[<>\[#=*~`_:{(\n-]")
_RUN_CHARS = tuple("=#*~`_<>-")
_ANGLE_TABLE = str.maketrans({"<": "‹", ">": "›"})
_TOOL_TABLE = str.maketrans({"{": "(", "}": ")", "_": " "})
# Cc (except \t \n \r), Cf, Co and Cs in one class: the zero-width, bidi and
# tag characters used to smuggle text past filters. Anything else
# unprintable (e.g. unassigned code points) is caught per character.
_INVISIBLE_RE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891"
    "\u08e2\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\ue000-\uf8ff\ud800-\udfff\U000e0000-\U000e007f\U000f0000-\U0010ffff]"
)
_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cn", "Cs"})
_RAW_FACTOR = 8  # raw input beyond max_chars * 8 + 256 is never looked at
_RAW_SLACK = 256
_MAX_PASSES = 4

_Repl = Callable[[re.Match[str]], str]


# --------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------


def _has_any(text: str, needles: Iterable[str]) -> bool:
    """Substring scans are far cheaper than a regex pass; most turns skip the regex."""
    return any(map(text.__contains__, needles))


def _matches(lowered: str, rules: tuple[_Rule, ...]) -> bool:
    contains = lowered.__contains__
    for anchors, pattern in rules:
        if any(map(contains, anchors)) and pattern.search(lowered) is not None:
            return True
    return False


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _normalise(text: str) -> tuple[str, bool]:
    """Steps 1-3; returns whether invisible characters were removed.

    Line breaks survive (as "\\n") only until ``_structure`` has used them to
    spot line-initial markers ("# user"); the final collapse turns them into spaces.
    """
    text = unicodedata.normalize("NFKC", text)
    if text.isprintable():  # fast path: almost every real turn; " " is its only whitespace
        if "  " in text or text[:1] == " " or text[-1:] == " ":
            text = _collapse(text)
        return text, False
    text, count = _INVISIBLE_RE.subn("", text)
    removed = count > 0
    lines: list[str] = []
    for line in text.splitlines():  # \n \r and Zl/Zp separate lines; split() eats \t and Zs
        line = " ".join(line.split())
        if not line.isprintable():  # rare leftovers, e.g. unassigned code points
            line = "".join(ch for ch in line if unicodedata.category(ch) not in _REMOVED_CATEGORIES)
            removed = True
        lines.append(line)
    text = "\n".join(lines).strip()
    if removed and not unicodedata.is_normalized("NFKC", text):
        # Removing a zero-width char can make a new composable sequence.
        text = unicodedata.normalize("NFKC", text)
    return text, removed


def _role_sub(flag: str, flags: set[str]) -> _Repl:
    def repl(match: re.Match[str]) -> str:
        flags.add(flag)
        groups = match.groupdict()
        if groups.get("slash"):
            return "\n"
        role = next((g for name, g in groups.items() if name.endswith("role") and g), None)
        return f"\n{role} - " if role else "\n"

    return repl


def _structure_pass(text: str, flags: set[str]) -> tuple[str, bool]:
    """One pass over tags, template tokens, delimiter runs and role markers."""
    n_template = n_heading = n_comments = n_runs = n_tags = n_brackets = n_json = n_roles = 0
    if "<" in text or "[" in text:
        text, n_template = _TEMPLATE_RE.subn(_role_sub(FLAG_ROLE_MARKER, flags), text)
    if "#" in text:
        text, n_heading = _HEADING_RE.subn(_role_sub(FLAG_ROLE_MARKER, flags), text)
    if "<" in text:
        text, n_comments = _COMMENT_RE.subn("\n", text)
    if _has_any(text, _RUN_CHARS):  # runs go before tags, so "<<<x>>>" loses both runs
        text, n_runs = _RUN_RE.subn("\n", text)
    if "<" in text:
        text, n_tags = _TAG_RE.subn("\n", text)
    if n_comments or n_runs or n_tags:
        flags.add(FLAG_DELIMITER)
    if "[" in text:
        text, n_brackets = _BRACKET_RE.subn(_bracket_repl(flags), text)
    if ":" in text:
        text, n_json = _ROLE_JSON_RE.subn(_role_sub(FLAG_ROLE_MARKER, flags), text)
        text, n_roles = _ROLE_COLON_RE.subn(_role_sub(FLAG_ROLE_MARKER, flags), text)
    text = _collapse(text)
    if "<" in text or ">" in text:
        text = text.translate(_ANGLE_TABLE)
    changed = n_template or n_heading or n_comments or n_runs or n_tags or n_brackets or n_json or n_roles
    return text, bool(changed)


def _structure(text: str, flags: set[str], *, tools: bool) -> str:
    """Repeat until stable: removing one construct can expose another ("<b># user")."""
    for _ in range(_MAX_PASSES):
        rewrote = False
        if tools and _matches(text.lower(), _TOOL_RULES):  # before the tags go: <tool_call>
            flags.add(FLAG_TOOL_SYNTAX)
            # Before the structural pass, so a marker this rewrite creates ("system_:") is caught.
            rewritten = text.translate(_TOOL_TABLE)
            rewrote, text = rewritten != text, rewritten
        text, changed = _structure_pass(text, flags)
        if not (rewrote or changed):
            break
    return text  # every pass ends angle-free and collapsed, even if the limit is hit


def _bracket_repl(flags: set[str]) -> _Repl:
    role_repl = _role_sub(FLAG_ROLE_MARKER, flags)

    def repl(match: re.Match[str]) -> str:
        if match.group("role"):
            return role_repl(match)
        flags.add(FLAG_DELIMITER)
        return "\n"

    return repl


def _cap(text: str, max_chars: int) -> tuple[str, bool]:
    """Cut at a word boundary so a half word never reaches the LLM."""
    if len(text) <= max_chars:
        return text, False
    if max_chars <= 0:
        return "", True
    cut = text[:max_chars]
    if text[max_chars] != " ":
        space = cut.rfind(" ")
        if space > 0:
            cut = cut[:space]
    return cut.rstrip(), True


def _clean(text: str, max_chars: int, *, quote: bool) -> tuple[str, set[str]]:
    if max_chars < 0:
        raise ValueError("max_chars must be >= 0")
    flags: set[str] = set()
    raw_limit = max_chars * _RAW_FACTOR + _RAW_SLACK
    if len(text) > raw_limit:  # bound the work a hostile payload can cause
        text = text[:raw_limit]
        flags.add(FLAG_TRUNCATED)
    text, removed = _normalise(text)
    if removed:
        flags.add(FLAG_CONTROL_CHARS)
    if _STRUCTURE_HINT_RE.search(text):  # plain speech skips every structural pass
        text = _structure(text, flags, tools=True)
    if _matches(text.lower(), _INJECTION_RULES):
        flags.add(FLAG_INJECTION)

    prefix = ""
    if quote and text and flags & HOSTILE_FLAGS:
        if text.startswith(CALLER_QUOTE_PREFIX):  # keep re-sanitising idempotent
            text = text[len(CALLER_QUOTE_PREFIX) :].lstrip()
        prefix = CALLER_QUOTE_PREFIX
    budget = max_chars - len(prefix)
    if budget <= 0 and text:
        return "", flags | {FLAG_TRUNCATED}
    text, truncated = _cap(text, budget)
    if truncated:
        flags.add(FLAG_TRUNCATED)
    return (prefix + text if text else ""), flags


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def sanitise_text(text: str, max_chars: int) -> tuple[str, frozenset[str]]:
    """Clean one piece of caller speech; hostile text comes back quoted."""
    cleaned, flags = _clean(text, max_chars, quote=True)
    return cleaned, frozenset(flags)


def neutralise_markup(text: str) -> str:
    """Defuse structure only, for retrieved passages that go into the prompt.

    Documents are not caller speech, so no quoting, tool or injection handling;
    but they can still carry tags or role markers that would break the
    reference block, so they get the same structural treatment (one line).
    """
    normalised, _ = _normalise(text)
    return _structure(normalised, set(), tools=False)


def _coerce(item: object) -> tuple[Role, str] | None:
    """Accept dicts and attribute objects; anything odd is rejected, not guessed."""
    try:
        if isinstance(item, dict) or isinstance(item, Mapping):
            role, content = item.get("role"), item.get("content")
        else:
            role, content = getattr(item, "role", None), getattr(item, "content", None)
    except Exception:  # a hostile/buggy object must not take the turn down
        return None
    if not isinstance(role, str) or not isinstance(content, str):
        return None
    normalised_role = str.lower(str.strip(role))
    content = str.__str__(content)  # drop str subclasses and their overrides
    if normalised_role == "user":
        return "user", content
    if normalised_role == "agent":
        return "agent", content
    return None


def _fit_history(turns: list[tuple[Role, str]], max_chars: int, flags: set[str]) -> tuple[Message, ...]:
    """Keep the newest turns that fit; older context matters least on a call."""
    kept: list[Message] = []
    remaining = max_chars
    for role, content in reversed(turns):
        if remaining <= 0:
            flags.add(FLAG_TRUNCATED)
            break
        text, turn_flags = _clean(content, max_chars, quote=role == "user")
        if len(text) > remaining:
            flags.add(FLAG_TRUNCATED)
            break
        flags |= turn_flags
        if text:
            kept.append(Message(role=role, content=text))
            remaining -= len(text)
    kept.reverse()
    return tuple(kept)


def sanitise_transcript(
    messages: Iterable[object],
    *,
    max_utterance_chars: int = 600,
    max_history_chars: int = 4000,
) -> SanitisedTranscript:
    """Turn ElevenLabs' raw transcript into the only form downstream may use.

    Agent turns after the latest user turn are dropped: history is what came
    *before* the utterance, and reordering them would misstate the call.
    """
    if max_utterance_chars < 0 or max_history_chars < 0:
        raise ValueError("caps must be >= 0")
    flags: set[str] = set()
    turns: list[tuple[Role, str]] = []
    for item in messages:
        parsed = _coerce(item)
        if parsed is None:
            flags.add(FLAG_MALFORMED)
        else:
            turns.append(parsed)

    last_user = next((i for i in range(len(turns) - 1, -1, -1) if turns[i][0] == "user"), None)
    utterance = ""
    earlier = turns
    if last_user is not None:
        utterance, utterance_flags = _clean(turns[last_user][1], max_utterance_chars, quote=True)
        flags |= utterance_flags
        earlier = turns[:last_user]
    if not utterance:
        flags.add(FLAG_EMPTY)

    history = _fit_history(earlier, max_history_chars, flags)
    turn = sum(1 for role, _ in turns if role == "user")
    return SanitisedTranscript(utterance=utterance, history=history, flags=frozenset(flags), turn=turn)
