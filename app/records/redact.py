"""Secrets a caller reads out never reach what is kept or sent: card numbers, social security and bank
account numbers, PINs, security codes and passwords.

`redact` is the one function for any text that came from a call and is about to be stored, shown,
e-mailed or posted (a turn, a gap's example, a message's name and text, a summary); `redact_labelled`
for a bare number that comes with a name (in a caller lookup's answer, an analysis field). `redact_turns`
does the same for consecutive turns of one call read as one text, so a number read out over two
turns is one number.

Speech recognition writes numbers as digits or as words ("four one one one", "oh", "double one",
"forty one"), with the separators people say ("dash", "space") and fillers ("uh", "um", "like")
between the groups. A *run* is such a sequence of digits; the words that join the parts of one
number ("and", "then", "ends with") may sit between its parts too. A run is a secret when:

- it is 13-19 digits starting 2-6 and passes the Luhn check (a card; a long order number or an
  international phone number said with "plus" is not), or a whole part of the run is;
- it is grouped 3-2-4 like a social security number, with a possible area, group and serial;
- a key word comes before it in the same clause: a card (6+ digits), SSN or bank account (4+), PIN,
  CVV or one-time code (3+);
- it is an IBAN (its check digits hold).

"password is X" (or passphrase, passcode...) redacts the whole value up to the end of the clause, so
a passphrase of several words goes entirely; "my password is not working" describes it and stays.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import phonenumbers
from stdnum import iban, luhn

from app.brain.sanitise import CALLER_QUOTE_PREFIX

CARD = "[card number]"
SSN = "[social security number]"
ACCOUNT = "[account number]"
REDACTED = "[redacted]"

_UNITS = {"zero": "0", "oh": "0", "o": "0", "nought": "0", "nil": "0", "one": "1", "two": "2", "three": "3"}
_UNITS |= {"four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9"}
_TEENS = {"ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14", "fifteen": "15"}
_TEENS |= {"sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19"}
_TENS = {"twenty": "2", "thirty": "3", "forty": "4", "fourty": "4", "fifty": "5", "sixty": "6"}
_TENS |= {"seventy": "7", "eighty": "8", "ninety": "9"}
_REPEAT = {"double": 2, "triple": 3}
_SPOKEN = _UNITS | _TEENS | {word: tens + "0" for word, tens in _TENS.items()}
_ZEROS = frozenset({"oh", "o"})  # zero only beside other digits: "oh, hi" is not a number

# Between the groups of one number: said or written separators, and fillers.
_SEPARATOR_WORDS = frozenset({"dash", "hyphen", "space", "dot", "slash", "point"})
_SEPARATOR_MARKS = frozenset("-–—/.,:()")
_FILLERS = frozenset({"uh", "um", "umm", "uhm", "er", "erm", "ah", "eh", "hmm", "mm", "like"})
# Between the parts of one number read out in pieces: "4012 8888, and then 8888 1881".
_JOINERS = frozenset({"and", "then", "ends", "ending", "end", "with", "in", "continues", "followed", "by", "next"})
_JOINERS_MAX = 4
_CLAUSE_END = frozenset(".!?;")
_CURRENCY_BEFORE = frozenset("$£€")
_CURRENCY_AFTER = frozenset({"dollars", "dollar", "bucks", "cents", "pounds", "euros", "percent", "%"})

# Key words, as word sequences; the kind says what the run or value after them is.
_KEYS: dict[tuple[str, ...], str] = {}
for _phrase, _kind in (
    ("card|credit|debit|visa|mastercard|amex|card number|credit card|debit card|master card|american express", "card"),
    ("ssn|social|social security|social security number|tax id|taxpayer id|itin|ss number", "ssn"),
    (
        "bank account|bank account number|account number|routing|routing number|iban|sort code|"
        "checking account|savings account|aba",
        "bank",
    ),
    (
        "pin|pin number|pin code|cvv|cvc|cvv2|cvc2|security code|verification code|one time code|one-time code|"
        "otp|access code|sms code|login code|auth code|authentication code|code on the back|digits on the back|"
        "number on the back|2fa code|two factor code",
        "code",
    ),
    (
        "password|pass word|passphrase|pass phrase|passcode|pass code|passwords|secret word|memorable word|"
        "security answer",
        "password",
    ),
):
    for _words in _phrase.split("|"):
        _KEYS[tuple(_words.replace("-", " - ").split())] = _kind
_KEY_LAST = frozenset(words[-1] for words in _KEYS)
_KEY_LONGEST = max(len(words) for words in _KEYS)
_KIND_MARKER = {"card": CARD, "ssn": SSN, "bank": ACCOUNT, "code": REDACTED}
_KIND_MIN_DIGITS = {"card": 6, "ssn": 4, "bank": 4, "code": 3}
_KEY_REACH = 8  # words between a key word and the run it names

# After "password": how it is joined to its value, and the words that describe it rather than say it.
_GLUE = frozenset({"is", "was", "it's", "its", "it", "are", "be", "would", "should", "will", "just", "'s", ":", "="})
_DESCRIBES = frozenset(
    "not no wrong incorrect invalid expired expiring locked blocked broken too very really still being getting "
    "gone missing lost forgotten reset changed changing case working required needed supposed different same "
    "empty blank in on at for from with of to about under behind written printed somewhere stored saved "
    "hard complicated complex the a an".split()
)
_DESCRIBES_ALONE = frozenset("correct right fine good ok okay simple easy strong weak long short new old".split())
_CLAUSE_STARTERS = frozenset(
    "but because cause although though however please which when while since unless if".split()
)
_AND_STARTERS = frozenset("i it my the can could would you we now that please so".split())
_VALUE_MAX_WORDS = 12

# An amount ("1,299", "49.99"), a word or a number, or any other visible character.
_TOKEN = re.compile(r"(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d{1,2}(?![\d.]))|(\w+(?:['’]\w+)*)|(\S)")
_IBAN = re.compile(r"\b[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]){11,30}\b")
# Most text holds no digit, fewer than two number words and no password: it skips the tokenizer.
_DIGIT = re.compile(r"\d")
_LETTERS = re.compile(r"[a-z]+")
_NUMBER_WORDS = frozenset({*_UNITS, *_TEENS, *_TENS, *_REPEAT})
_PASSWORD_WORDS = frozenset(words[-1] for words, kind in _KEYS.items() if kind == "password")
_MARKER_TEXT = CALLER_QUOTE_PREFIX.strip()


@dataclass(slots=True)
class _Token:
    text: str  # lower-cased
    start: int
    end: int
    kind: str  # "digits", "word", "mark", "amount", or "joined" (the "one" of "forty one")
    digits: str = ""  # what a number word or digit token says, else ""


@dataclass(slots=True)
class _Span:
    start: int
    end: int
    marker: str
    digits: str = ""


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    append = tokens.append
    lowered = text.lower()
    find = lowered.find
    at = 0
    for amount, word, mark in _TOKEN.findall(lowered):
        found = amount or word or mark
        start = find(found, at)
        at = end = start + len(found)
        if mark:
            append(_Token(mark, start, end, "mark"))
        elif amount:
            append(_Token(amount, start, end, "amount"))
        elif word.isdigit():
            append(_Token(word, start, end, "digits", word))
        elif word[-2:] in ("'s", "’s") and word[:-2] in _KEY_LAST:  # "my PIN's 4321": the key, then its glue
            append(_Token(word[:-2], start, end - 2, "word"))
            append(_Token("'s", end - 2, end, "word"))
        else:
            append(_Token(word, start, end, "word", _SPOKEN.get(word, "")))
    _combine(tokens)
    return tokens


def _combine(tokens: list[_Token]) -> None:
    """ "forty one" says 41 and "double one" 11: the first word carries the digits, the second none."""
    for i, token in enumerate(tokens[:-1]):
        following = tokens[i + 1]
        if token.text in _TENS and following.text in _UNITS and following.text not in _ZEROS and following.digits:
            token.digits = _TENS[token.text] + following.digits
            token.end, following.digits, following.kind = following.end, "", "joined"
        elif token.text in _REPEAT and following.digits and len(following.digits) == 1:
            token.digits = following.digits * _REPEAT[token.text]
            token.end, following.digits, following.kind = following.end, "", "joined"


@dataclass(slots=True)
class _Run:
    first: int  # token indexes
    last: int
    parts: list[list[str]]  # groups of digits, in parts split where the speaker paused or joined

    @property
    def digits(self) -> str:
        return "".join("".join(part) for part in self.parts)


_STRONG = frozenset(",.;:") | _FILLERS | _JOINERS  # a pause or a join: where a part of a number may end
_GAP_MARKS = _SEPARATOR_MARKS | _CLAUSE_END
_GAP_WORDS = _SEPARATOR_WORDS | _FILLERS | _JOINERS


def _runs(tokens: list[_Token]) -> list[_Run]:
    runs: list[_Run] = []
    i, n = 0, len(tokens)
    while i < n:
        token = tokens[i]
        if not token.digits or (token.text in _ZEROS and not _digit_follows(tokens, i)):
            i += 1
            continue
        parts: list[list[str]] = [[token.digits]]
        last = i
        gap = gap_words = 0
        strong = False
        for j in range(i + 1, n):
            t = tokens[j]
            kind = t.kind
            if kind == "joined":
                continue
            if t.digits:
                if strong:
                    parts.append([t.digits])
                elif gap or kind == "digits" or tokens[last].kind == "digits":
                    parts[-1].append(t.digits)
                else:
                    parts[-1][-1] += t.digits  # "four one one one": one group
                last, gap, gap_words, strong = j, 0, 0, False
                continue
            if kind == "mark" and t.text in _GAP_MARKS:
                gap += 1
            elif kind == "word" and t.text in _GAP_WORDS:
                gap += 1
                gap_words += 1
            else:
                break
            strong = strong or t.text in _STRONG
            if gap_words > _JOINERS_MAX or gap > _JOINERS_MAX + 3:
                break
        runs.append(_Run(i, last, parts))
        i = last + 1
    return runs


def _digit_follows(tokens: list[_Token], i: int) -> bool:
    for t in tokens[i + 1 : i + 4]:
        if t.digits and t.text not in _ZEROS:
            return True
        if not (t.kind == "mark" or t.text in _ZEROS or t.text in _SEPARATOR_WORDS):
            return False
    return False


def _is_card(digits: str, international: bool) -> bool:
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456" or luhn.checksum(digits) != 0:
        return False
    if international and len(digits) <= 15:  # "plus 49 1512 3456789" is a phone number
        try:
            return not phonenumbers.is_valid_number(phonenumbers.parse("+" + digits))
        except phonenumbers.NumberParseException:
            return True
    return True


def _is_ssn(parts: Sequence[Sequence[str]]) -> bool:
    groups = [group for part in parts for group in part]
    if [len(g) for g in groups] != [3, 2, 4]:
        return False
    area, group, serial = groups
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _keys_before(tokens: list[_Token], i: int) -> list[str]:
    """The kinds of the key words before token i in its clause, nearest first."""
    kinds: list[str] = []
    words = 0
    j = i - 1
    while j >= 0 and words <= _KEY_REACH:
        t = tokens[j]
        if t.kind == "mark":
            if t.text in _CLAUSE_END and words:
                break
        else:
            kind = _key_ending_at(tokens, j) if t.text in _KEY_LAST else None
            if kind is not None:
                kinds.append(kind)
            if t.text not in _FILLERS and t.text not in _GLUE:
                words += 1
        j -= 1
    return kinds


def _key_ending_at(tokens: list[_Token], j: int) -> str | None:
    for length in range(min(_KEY_LONGEST, j + 1), 0, -1):
        words = tuple(t.text for t in tokens[j - length + 1 : j + 1])
        kind = _KEYS.get(words)
        if kind is not None:
            return kind
    return None


def _price(tokens: list[_Token], run: _Run) -> bool:
    before = tokens[run.first - 1].text if run.first > 0 else ""
    after = tokens[run.last + 1].text if run.last + 1 < len(tokens) else ""
    return before in _CURRENCY_BEFORE or after in _CURRENCY_AFTER


def _run_spans(tokens: list[_Token]) -> list[_Span]:
    spans: list[_Span] = []
    for run in _runs(tokens):
        start, end = tokens[run.first].start, tokens[run.last].end
        digits = run.digits
        international = run.first > 0 and tokens[run.first - 1].text in ("+", "plus")
        if _is_card(digits, international):
            spans.append(_Span(start, end, CARD, digits))
            continue
        named = [k for k in _keys_before(tokens, run.first) if k in _KIND_MARKER and len(digits) >= _KIND_MIN_DIGITS[k]]
        if named and not _price(tokens, run):  # "the PIN for my card is 9912": a PIN
            spans.append(_Span(start, end, _KIND_MARKER[named[0]], digits))
            continue
        if _is_ssn(run.parts):
            spans.append(_Span(start, end, SSN, digits))
            continue
        spans += _part_spans(tokens, run, international)
    return spans


def _part_spans(tokens: list[_Token], run: _Run, international: bool) -> list[_Span]:
    """Cards and SSNs that are whole parts of a longer run ("4111 1111 1111 1111, and 415 555 0123")."""
    if len(run.parts) < 2:
        return []
    found: list[_Span] = []
    bounds = _part_bounds(tokens, run)
    i = 0
    while i < len(run.parts):
        for j in range(len(run.parts) - 1, i - 1, -1):
            window = run.parts[i : j + 1]
            digits = "".join("".join(part) for part in window)
            if (i == 0 and j == len(run.parts) - 1) or len(digits) > 19:
                continue
            marker = CARD if _is_card(digits, international and i == 0) else SSN if _is_ssn(window) else None
            if marker is not None:
                found.append(_Span(bounds[i][0], bounds[j][1], marker, digits))
                i = j
                break
        i += 1
    return found


def _part_bounds(tokens: list[_Token], run: _Run) -> list[tuple[int, int]]:
    """Where each part of a run starts and ends in the text (parts as `_runs` split them)."""
    sizes = [sum(len(group) for group in part) for part in run.parts]
    bounds: list[tuple[int, int]] = []
    taken = 0
    start = None
    for t in tokens[run.first : run.last + 1]:
        if not t.digits:
            continue
        if start is None:
            start = t.start
        taken += len(t.digits)
        if taken >= sizes[len(bounds)]:
            bounds.append((start, t.end))
            start, taken = None, 0
            if len(bounds) == len(sizes):
                break
    return bounds


def _password_spans(tokens: list[_Token]) -> list[_Span]:
    spans: list[_Span] = []
    n = len(tokens)
    for i, token in enumerate(tokens):
        if token.text not in _KEY_LAST:
            continue
        kind = _key_ending_at(tokens, i)
        glued = False
        if kind not in ("password", "code"):
            continue
        j = i + 1
        while j < n and (tokens[j].text in _GLUE or tokens[j].text in _FILLERS or tokens[j].kind == "mark"):
            if tokens[j].kind == "mark" and tokens[j].text not in ",:=.…-" and tokens[j].text not in _GLUE:
                break
            glued = glued or tokens[j].text in _GLUE
            j += 1
        if j >= n or tokens[j].kind == "mark":
            continue
        value = tokens[j]
        if kind == "code":
            if value.kind == "word" and not value.digits and any(c.isdigit() for c in value.text):
                spans.append(_Span(value.start, value.end, REDACTED))  # "the code is AB12CD"
            continue
        end = _value_end(tokens, j)
        words = tokens[j : end + 1]
        if not glued and not any(c.isdigit() for t in words for c in t.text):
            continue  # "password reset", "I forgot my password and ..."
        if value.text in _DESCRIBES or (value.text in _DESCRIBES_ALONE and end == j):
            continue
        spans.append(_Span(value.start, tokens[end].end, REDACTED))
    return spans


def _value_end(tokens: list[_Token], j: int) -> int:
    """The last token of a password's value: up to the end of its clause, at most a dozen words."""
    end = j
    words = 0
    for k in range(j + 1, len(tokens)):
        t = tokens[k]
        if t.kind == "mark":
            if 0 < k < len(tokens) - 1 and tokens[k - 1].end == t.start and tokens[k + 1].start == t.end:
                continue  # inside a word: "Qwerty!23", "abc.def"
            if t.text in _CLAUSE_END:
                break
            if t.text == "," and k + 1 < len(tokens) and _starts_clause(tokens, k + 1):
                break
            continue
        if _starts_clause(tokens, k):
            break
        words += 1
        if words >= _VALUE_MAX_WORDS:
            break
        end = k
    return end


def _starts_clause(tokens: list[_Token], k: int) -> bool:
    t = tokens[k].text
    if t in _CLAUSE_STARTERS:
        return True
    return t == "and" and k + 1 < len(tokens) and tokens[k + 1].text in _AND_STARTERS


def _iban_spans(text: str) -> list[_Span]:
    return [_Span(m.start(), m.end(), ACCOUNT, m.group()) for m in _IBAN.finditer(text) if iban.is_valid(m.group())]


def _could_hold_secret(text: str) -> bool:
    return _could_hold_digits(text, _PASSWORD_WORDS)


def _could_hold_digits(text: str, or_words: frozenset[str] = frozenset()) -> bool:
    """A digit, two number words, or one of `or_words`: what a secret needs at the least."""
    if _DIGIT.search(text):
        return True
    words = _LETTERS.findall(text.lower())
    return not or_words.isdisjoint(words) or len([w for w in words if w in _NUMBER_WORDS]) >= 2


def _spans(text: str) -> list[_Span]:
    if not _could_hold_secret(text):
        return []
    tokens = _tokens(text)
    spans = _run_spans(tokens) + _password_spans(tokens) + _iban_spans(text)
    return _merged(spans)


def _merged(spans: list[_Span]) -> list[_Span]:
    spans.sort(key=lambda s: (s.start, -s.end))
    merged: list[_Span] = []
    for span in spans:
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            last.end = max(last.end, span.end)
            last.digits += span.digits
            continue
        merged.append(span)
    return merged


def _apply(text: str, spans: Iterable[_Span], offset: int = 0) -> str:
    out: list[str] = []
    at = 0
    for span in spans:
        start, end = span.start - offset, span.end - offset
        if end <= 0 or start >= len(text):
            continue
        out += [text[at : max(start, 0)], span.marker]
        at = min(end, len(text))
    out.append(text[at:])
    return "".join(out)


def _unmarked(text: str) -> str:
    """Without the sanitiser's "[caller's words]": it is a note for the model, not what was said."""
    if _MARKER_TEXT not in text:
        return text
    return " ".join(text.replace(_MARKER_TEXT, " ").split())


def redact(text: str) -> str:
    """What may be kept or sent of text said on a call: secrets replaced, everything else as it was."""
    text = _unmarked(text)
    return _apply(text, _spans(text))


def redact_labelled(label: str, value: str) -> str:
    """`value` redacted as it reads after its label ("pin", "card_number"): a field's name is the key
    word a bare value lacks. All of it is withheld when the label itself would be changed."""
    prefix = " ".join(label.replace("_", " ").split()) + ": "
    redacted = redact(prefix + value)
    return redacted[len(prefix) :] if redacted.startswith(prefix) else REDACTED


def redact_turns(said: Sequence[str], others: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """Consecutive caller turns of one call, redacted as one text; and texts that go with them (what
    the agent said, a gap's question), each redacted, and cleared of any digits of the callers'
    secrets they repeat ("so that's 4012 8888...")."""
    said = [_unmarked(text) for text in said]
    joined = " ".join(said)
    spans = _spans(joined)
    redacted: list[str] = []
    offset = 0
    for text in said:
        redacted.append(_apply(text, [s for s in spans if s.start < offset + len(text) and s.end > offset], offset))
        offset += len(text) + 1
    secrets = [s.digits for s in spans if len(s.digits) >= 4]
    return redacted, [_repeats_cleared(redact(text), secrets) for text in others]


def _repeats_cleared(text: str, secrets: list[str]) -> str:
    if not secrets or not _could_hold_digits(text):
        return text
    tokens = _tokens(text)
    repeated = [
        _Span(tokens[run.first].start, tokens[run.last].end, REDACTED)
        for run in _runs(tokens)
        if len(run.digits) >= 4 and any(run.digits in secret for secret in secrets)
    ]
    return _apply(text, repeated)


def could_continue(text: str) -> bool:
    """Whether the next turn may finish a secret this one began: it ends in digits, in a key word
    ("my PIN is"), or in a password's value."""
    tokens = [t for t in _tokens(_unmarked(text)) if t.kind != "mark" and t.text not in _FILLERS]
    if not tokens:
        return False
    last = len(tokens) - 1
    while last >= 0 and tokens[last].text in _GLUE:
        last -= 1
    if last < 0:
        return False
    if tokens[last].digits or tokens[last].kind == "joined" or _key_ending_at(tokens, last) is not None:
        return True
    spans = _spans(text)
    return bool(spans) and spans[-1].marker == REDACTED and not text[spans[-1].end :].strip(" .,!?")
