"""Is an utterance only small talk ("thanks, bye", "hello?", "okay great")? Then the documents not
answering it is no knowledge gap. Deliberately narrow: every word must be on the list."""

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
