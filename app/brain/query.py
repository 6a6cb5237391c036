"""The text we search with: the caller's latest words, plus their previous turn when it is a follow-up.

"And on weekends?" or "how much is that one" mean nothing alone; no model call is spent on
rewriting them, because that would sit on every turn's critical path.
"""

from __future__ import annotations

import re

from app.brain.sanitise import SanitisedTranscript

_WORD = re.compile(r"[a-z0-9']+")
_FOLLOW_UP_START = re.compile(
    r"^(and|also|but|or|what about|how about|then|so|plus|same for|what if|okay and|ok and)\b", re.IGNORECASE
)
_POINTING = frozenset({"it", "that", "this", "those", "these", "them", "one", "there", "then", "same", "its", "they"})
_FILLER = frozenset(
    """a an the is are was were be do does did can could would should will i you we me my your our of to in on
    for at by with about how what when where which who why much many any some yes yeah no okay ok um uh well
    please just so and or but also there it that this those these them one then same its they""".split()
)
_SHORT = 3  # content words; fewer than this and the turn leans on the one before


def retrieval_query(transcript: SanitisedTranscript) -> tuple[str, bool]:
    """The query text, and whether the previous user turn was folded in."""
    utterance = transcript.utterance
    previous = next((m.content for m in reversed(transcript.history) if m.role == "user"), None)
    if previous is None or not _is_follow_up(utterance):
        return utterance, False
    return f"{previous} {utterance}", True


def _is_follow_up(utterance: str) -> bool:
    words = _WORD.findall(utterance.lower())
    content = [w for w in words if w not in _FILLER]
    if _FOLLOW_UP_START.match(utterance.strip()) and len(content) <= _SHORT + 1:
        return True
    return len(content) < _SHORT and (bool(_POINTING.intersection(words)) or len(words) <= 4)
