"""Is an utterance only small talk ("thanks, bye", "hello?", "okay great")? Then the documents not
answering it is no knowledge gap. Deliberately narrow: every word must be on the list. Without a
model, a hello, a "how are you" or a thanks gets a word back (`reply`), not a search of the documents."""

from __future__ import annotations

import re

_WORDS = frozenset(
    """
    hi hello hey hiya morning afternoon evening good day there yes yeah yep yup no nope nah ok okay alright
    all right sure fine great cool perfect lovely nice thanks thank you very much so cheers bye goodbye
    see ya later that's that it is all for now i'm im i am done got understood uh um er erm hmm mm oh ah
    well then please sorry pardon again hang on wait one moment just a sec second it's have day
    """.split()
)
_WORD = re.compile(r"[a-z']+")


def small_talk(utterance: str) -> bool:
    words = _WORD.findall(utterance.lower())
    return not words or all(word in _WORDS for word in words)


_HELLO = frozenset("hi hello hey hiya morning afternoon evening".split())
_THANKS = frozenset("thanks thank cheers".split())
_BYE = frozenset("bye goodbye".split())
_HOW_ARE_YOU = re.compile(r"^\W*(?:\w+\W+){0,3}how(?:'s| is| are)\s+(?:you|it going|things|your day)\b[\w\s]{0,12}\W*$")
HELP = "How can I help you today?"


def reply(utterance: str) -> str | None:
    """A word back to a hello, a "how are you" or a thanks said on its own; None for anything else."""
    lowered = utterance.lower()
    words = set(_WORD.findall(lowered))
    if _HOW_ARE_YOU.search(lowered):
        return f"I'm well, thank you for asking. {HELP}"
    if not words or not small_talk(utterance) or words & _BYE:
        return None
    if words & _HELLO:
        return f"Hello! {HELP}"
    if words & _THANKS:
        return "You're welcome. Is there anything else I can help with?"
    return None
