"""Analysis without a model: what the records say, put into words by rules.

- The summary is the caller's requests (their words, up to three, small talk left out) and how the
  call ended, in at most three sentences.
- Need met: transferred or message taken when the records say so; unresolved when the caller said
  nothing, a question went unanswered, the agent could not continue, or the last answer was an
  apology; resolved otherwise.
- The intent is the default intent whose words the caller used most (complaint, technical problem,
  billing, sales, in that order on a tie), else question when they asked one, else other; only an
  intent of the configured list is chosen.
- ANALYSIS_FILE's fields are left empty with the reason "no model" (or "nothing said": a model is
  not asked about a call in which the caller said nothing).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from app.analysis.fields import FieldSpec
from app.brain.small_talk import small_talk
from app.records.analyses import Analysis
from app.records.queries import CallDetail
from app.records.redact import redact
from app.settings import OTHER_INTENT

NO_MODEL = "no model"
NOTHING_SAID = "nothing said"  # with a model: a call the caller said nothing in is not sent to it
MAX_REQUESTS = 3
MAX_REQUEST_CHARS = 120
# Turn outcomes after which the caller did not get an answer (see app.brain.turn).
_NOT_ANSWERED = frozenset({"apology", "no_index", "not_understood", "fallback"})
_INTENT_WORDS: dict[str, tuple[str, ...]] = {
    "complaint": (
        "complain", "complaint", "unhappy", "unacceptable", "terrible", "awful", "disappointed", "angry",
        "frustrated", "ridiculous", "worst", "furious", "fed up", "not happy", "poor service",
    ),
    "technical problem": (
        "not working", "doesn't work", "isn't working", "stopped working", "broken", "outage", "down", "slow",
        "error", "router", "modem", "wifi", "wi-fi", "connection", "disconnect", "disconnects", "dropping",
        "no signal", "no internet", "fault", "reset", "buffering", "lights", "blinking",
    ),
    "billing": (
        "bill", "billing", "charge", "charged", "invoice", "refund", "payment", "pay", "paid", "autopay",
        "fee", "fees", "overcharged", "balance", "direct debit", "receipt", "discount",
    ),
    "sales": (
        "upgrade", "buy", "sign up", "new plan", "switch", "deal", "deals", "package", "packages", "subscribe",
        "interested in", "new customer", "get connected", "faster",
    ),
}  # fmt: skip
_INTENT_PATTERNS = {
    name: re.compile(r"\b(?:" + "|".join(re.escape(word) for word in words) + r")\b")
    for name, words in _INTENT_WORDS.items()
}
_QUESTION_START = re.compile(
    r"^(what|how|when|where|why|which|who|can|could|do|does|did|is|are|will|would|should|may)\b", re.I
)


def rules_analysis(
    detail: CallDetail, intents: Sequence[str], fields: Sequence[FieldSpec], why_empty: str = NO_MODEL
) -> Analysis:
    said = [turn.caller_text for turn in detail.turns if turn.caller_text.strip()]
    return Analysis(
        summary=summary(detail, said),
        intent=intent(said, intents),
        need_met=need_met(detail, said),
        fields={spec.name: None for spec in fields},
        empty={spec.name: why_empty for spec in fields},
        method="rules",
    )


def need_met(detail: CallDetail, said: list[str]) -> str:
    outcome = detail.call.outcome
    if outcome == "transferred":
        return "transferred"
    if outcome == "message":
        return "message_taken"
    if not said or outcome in ("unanswered", "fallback") or detail.turns[-1].outcome in _NOT_ANSWERED:
        return "unresolved"
    return "resolved"


def intent(said: list[str], intents: Sequence[str]) -> str:
    text = " ".join(" ".join(line.lower().replace("’", "'").split()) for line in said)
    scores = {name: len(pattern.findall(text)) for name, pattern in _INTENT_PATTERNS.items() if name in intents}
    best = max(scores, key=lambda name: scores[name], default=None)  # the first of equals: the order above
    if best is not None and scores[best] > 0:
        return best
    if "question" in intents and any("?" in line or _QUESTION_START.match(line.strip()) for line in said):
        return "question"
    return OTHER_INTENT


def summary(detail: CallDetail, said: list[str]) -> str:
    if not said:
        return "The caller hung up without saying anything."
    requests = [line for line in said if not small_talk(line)][:MAX_REQUESTS]
    if requests:
        quoted = [f"“{_cut(line)}”" for line in requests]
        asked = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]
        opening = f"The caller said {asked}."
    else:
        opening = "The caller only greeted or thanked the agent."
    return redact(f"{opening} {_ending(detail)}")


def _ending(detail: CallDetail) -> str:
    call = detail.call
    if call.outcome == "transferred":
        return f"They were transferred to {call.transferred_to}." if call.transferred_to else "They were transferred."
    if call.outcome == "message":
        return "They left a message for the team."
    if call.outcome == "fallback":
        return "The agent could not continue the call."
    unanswered = [turn.caller_text for turn in detail.turns if turn.unanswered]
    if unanswered:
        return f"The documents did not answer “{_cut(unanswered[0])}”."
    if detail.turns[-1].outcome in _NOT_ANSWERED:
        return "The agent could not answer the last request."
    return "The agent answered."


def _cut(line: str) -> str:
    line = " ".join(line.split())
    if len(line) <= MAX_REQUEST_CHARS:
        return line
    return line[:MAX_REQUEST_CHARS].rsplit(" ", 1)[0] + "…"
