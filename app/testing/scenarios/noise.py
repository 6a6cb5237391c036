"""Speech-recognition noise: the caller's line as ASR might hear it (`--asr-noise P --seed S`).

Punctuation is gone (recognisers write little of it), and each word, with probability P, is
dropped, said twice, heard as a homophone ("for" as "four"), or has its number written the other
way ("5" as "five", "five" as "5", "212" as "two one two"). The same seed, scenario and turn give
the same line every time, whatever order the scenarios run in.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

_HOMOPHONES = [
    ("to", "two", "too"),
    ("for", "four"),
    ("there", "their"),
    ("right", "write"),
    ("by", "buy", "bye"),
    ("no", "know"),
    ("new", "knew"),
    ("here", "hear"),
    ("week", "weak"),
    ("one", "won"),
    ("eight", "ate"),
    ("sell", "cell"),
    ("mail", "male"),
    ("wait", "weight"),
    ("hour", "our"),
    ("your", "you're"),
    ("than", "then"),
    ("would", "wood"),
    ("fare", "fair"),
    ("sale", "sail"),
    ("through", "threw"),
    ("see", "sea"),
    ("whole", "hole"),
    ("plane", "plain"),
    ("bill", "build"),
]
_SOUNDS_LIKE = {word: [other for other in group if other != word] for group in _HOMOPHONES for word in group}
_NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = {20: "twenty", 30: "thirty", 40: "forty", 50: "fifty", 60: "sixty", 70: "seventy", 80: "eighty", 90: "ninety"}
_VALUES = {word: value for value, word in enumerate(_NUMBERS)} | {word: value for value, word in _TENS.items()}
_PUNCTUATION = re.compile(r"[^\w\s'$%+]|(?<!\w)'|'(?!\w)")


@dataclass(frozen=True)
class AsrNoise:
    rate: float
    seed: int

    def hear(self, text: str, scenario: str, turn: int) -> str:
        """What the recogniser writes for the caller's `turn`-th line (from 1) of `scenario`."""
        if self.rate <= 0:
            return text
        rng = random.Random(f"{self.seed}/{scenario}/{turn}")
        words = _PUNCTUATION.sub(" ", text).split()
        heard: list[str] = []
        for word in words:
            if rng.random() >= self.rate:
                heard.append(word)
                continue
            changes = ["drop", "double"]
            if word.lower() in _SOUNDS_LIKE:
                changes.append("homophone")
            if _number_said_otherwise(word) is not None:
                changes.append("number")
            change = rng.choice(changes)
            if change == "double":
                heard += [word, word]
            elif change == "homophone":
                heard.append(rng.choice(_SOUNDS_LIKE[word.lower()]))
            elif change == "number":
                heard.append(_number_said_otherwise(word) or word)
        return " ".join(heard or words)


def _number_said_otherwise(word: str) -> str | None:
    """Digits as words and words as digits: "5" ⇄ "five", "$5" → "five dollars", "212" → "two one two"."""
    lower = word.lower()
    if lower in _VALUES:
        return str(_VALUES[lower])
    dollars = lower.startswith("$")
    digits = lower.removeprefix("$")
    if not digits.isdigit():
        return None
    value = int(digits)
    if value < 100 and not (len(digits) > 1 and digits.startswith("0")):
        spoken = _NUMBERS[value] if value < 20 else " ".join(filter(None, (_TENS[value // 10 * 10], _ones(value))))
    else:
        spoken = " ".join(_NUMBERS[int(d)] for d in digits)
    return f"{spoken} dollars" if dollars else spoken


def _ones(value: int) -> str:
    return _NUMBERS[value % 10] if value % 10 else ""
