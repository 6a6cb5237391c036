"""Secrets a caller reads out never reach the records store: card numbers, social security numbers,
and whatever follows "my password is", "the security code is" and the like.

Speech-to-text writes numbers as digits or as words ("four one one one ..."), in groups or not, so a
number is a run of digit tokens with any separators between them. A run of 16 to 19 digits is a card
number whatever it is; 13 to 15 digits is one when it passes the Luhn check (a long international
phone number rarely does, and a callback number must stay readable).
"""

from __future__ import annotations

import re

CARD = "[card number]"
REDACTED = "[redacted]"

_WORDS = {"zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}
_WORDS |= {"six": "6", "seven": "7", "eight": "8", "nine": "9"}
_DIGIT = r"(?:\d+|" + "|".join(_WORDS) + r")"
_RUN = re.compile(rf"\b{_DIGIT}(?:[\s.,/\-]*\b{_DIGIT})*\b", re.IGNORECASE)
_SSN = re.compile(r"\b\d{3}[\s-]\d{2}[\s-]\d{4}\b")
_SECRET = re.compile(
    r"\b(?P<key>pin(?:\s+number)?|passcode|password|pass\s*word|cvv|cvc|security\s+code|verification\s+code|"
    r"one[-\s]time\s+code|code\s+on\s+the\s+back(?:\s+of\s+(?:the|my)\s+card)?)"
    r"(?P<glue>\s*(?:is|was|it's|:|=)?\s*)(?P<value>[^\s,.;!?]+(?:\s+\d+)*)",
    re.IGNORECASE,
)


def _digits(run: str) -> str:
    return "".join(_WORDS.get(token.lower(), token) for token in re.findall(_DIGIT, run, re.IGNORECASE))


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = _digits(match.group())
    if 16 <= len(digits) <= 19 or (13 <= len(digits) <= 15 and luhn_valid(digits)):
        return CARD
    return match.group()


def _secret(match: re.Match[str]) -> str:
    # "my password is X" or "PIN 1234", but not "I forgot my password and ...".
    if not match.group("glue").strip() and not any(c.isdigit() for c in match.group("value")):
        return match.group()
    return f"{match.group('key')}{match.group('glue')}{REDACTED}"


def redact(text: str) -> str:
    """The text with card numbers and other secrets replaced; everything else as it was."""
    text = _SECRET.sub(_secret, text)
    text = _SSN.sub(REDACTED, text)
    return _RUN.sub(_card, text)
