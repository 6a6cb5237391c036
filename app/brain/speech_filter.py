"""Text fit to be spoken: markdown, links, addresses and emoji taken out while the answer streams.

Everything the brain sends to text-to-speech passes one `SpeechFilter` per turn (`speakable` is the
same filter for a whole text at once). Emphasis, headings, list markers, tables, code fences, link
targets and emoji are removed; a link keeps its text; a URL is said as "on our website" and an
e-mail address as "by email".

A chunk goes out as soon as it cannot be the start of markup. Only a tail that may still become
markup is held back: an unclosed `[link](...)`, a word that may be turning into a URL or holds an
'@', the first characters of a line that may be a heading, list marker, rule or code fence, and a
trailing '|'. Plain text passes through unchanged, chunk for chunk.

An address whose first part was spoken before its '@' arrived loses the rest: "write to support"
then " by email". Holding every word back in case an '@' follows would delay every chunk.
"""

from __future__ import annotations

import re

from app.brain.sanitise import CALLER_QUOTE_PREFIX

_EMOJI = "\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0f\u200d\u20e3"
# Characters that may be (part of) markup; a chunk without any of them skips the slow path.
_SPECIAL = re.compile(rf"[*_~`#\[\]|>@/\n\u2022{_EMOJI}]|(?i:www\.)")
_URL_STARTS = ("https://", "http://", "www.")
_MAX_LINK_CHARS = 200  # an unclosed '[' further back than this was never a link

# The current line so far could still become a line marker (held until it is known).
_LINE_OPEN = re.compile(r"[ \t]*(?:#{0,6}|[-+*\u2022>]|\d{1,3}[.)]?|`{1,2}|```[^\n]*|[|:\- \t]*|[-*_=]+)")
_URL = r"(?:https?://|www\.)[^\s<>()\[\]]*[^\s<>()\[\].,;:!?'\"]"
_EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
_ADDRESSES = re.compile(rf"(?i)\b(visit\s+)?(?:(?:at|on)\s+)?(?:{_URL})|(?:\b(?:at|to)\s+)?{_EMAIL}")
_LEAD_IN = re.compile(r"(?i)\b(?:visit|at|to|on)\s+$")
_ORPHAN_DOMAIN = re.compile(r"(?<![\w.+-])@[\w-]+(?:\.[\w-]+)+")
# The sanitiser's note to the model, should the model repeat it: never read out to the caller.
_QUOTE_MARKER = re.compile(re.escape(CALLER_QUOTE_PREFIX.strip()) + r"[ \t]?", re.IGNORECASE)
_LINK = re.compile(r"\[([^\]\n]*)\](?:\([^)\n]*\)|\[[^\]\n]*\])")
_DROP_LINES = re.compile(r"(?m)^[ \t]*(?:```[^\n]*|[|:+ \t]*-{3,}[|:\-+ \t]*|[*_=]{3,}[ \t]*)(?:\n|$)")
_LINE_MARKERS = re.compile(r"(?m)^[ \t]*(?:#{1,6}[ \t]*|[-+*\u2022][ \t]+|\d{1,3}[.)][ \t]+|>[ \t]?|\|[ \t]*)")
_ROW_END = re.compile(r"[ \t]*\|[ \t]*(?=\n|$)")
_CELL = re.compile(r"[ \t]*\|[ \t]*")
_INLINE = re.compile(rf"[*_~`\[\]\u2022{_EMOJI}]")
_NOT_A_LINE_START = "\x00"


def _address(match: re.Match[str]) -> str:
    if "@" in match.group(0):
        return "by email"
    visit = match.group(1)
    return f"{visit.rstrip()} our website" if visit else "on our website"


class SpeechFilter:
    """One turn's text on its way to the voice: `feed` each chunk, then `flush` at the end."""

    def __init__(self) -> None:
        self._held = ""
        self._line_start = True

    def feed(self, chunk: str) -> str:
        if not self._held and not (self._line_start and chunk[:1] in " \t-+*#>|`0123456789"):
            if _SPECIAL.search(chunk) is None and not _maybe_url(chunk):
                self._line_start = False if chunk else self._line_start
                return chunk
        text = self._held + chunk
        cut = _safe_length(text, self._line_start)
        self._held = text[cut:]
        return self._emit(text[:cut])

    def flush(self) -> str:
        text, self._held = self._held, ""
        return self._emit(text)

    def _emit(self, text: str) -> str:
        if not text:
            return ""
        line_start = self._line_start
        self._line_start = text.endswith("\n")
        return _clean(text, line_start)


def speakable(text: str) -> str:
    """A whole text made fit to be spoken, whitespace collapsed."""
    return " ".join(_clean(text, line_start=True).split())


def _maybe_url(chunk: str) -> bool:
    """The chunk's last word may be (the start of) a URL."""
    if not chunk or chunk[-1].isspace():
        return False
    word = chunk.rsplit(None, 1)[-1].lstrip("(<\"'").lower()
    return bool(word) and any(start.startswith(word) or word.startswith(start) for start in _URL_STARTS)


def _safe_length(text: str, line_start: bool) -> int:
    """How much of `text` can go out now: everything before the earliest tail that may be markup."""
    cut = len(text)
    newline = text.rfind("\n")
    if newline >= 0 or line_start:
        begin = newline + 1
        if _LINE_OPEN.fullmatch(text, begin):
            cut = begin
    cut = min(cut, _open_link(text))
    if text and not text[-1].isspace():
        begin = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t")) + 1
        word = text[begin:].lstrip("(<\"'")
        low = word.lower()
        if "@" in word or (word and any(s.startswith(low) or low.startswith(s) for s in _URL_STARTS)):
            # "at", "to", "visit" before an address are replaced with it.
            lead = _LEAD_IN.search(text, max(0, begin - 8), begin)
            cut = min(cut, lead.start() if lead else begin)
    stripped = text.rstrip(" \t")
    if stripped.endswith("|"):
        cut = min(cut, len(stripped) - 1)
    return cut


def _open_link(text: str) -> int:
    """Where an unfinished `[text](url)` starts, or len(text)."""
    start = text.find("[", max(0, len(text) - _MAX_LINK_CHARS))
    while start >= 0:
        close = text.find("]", start)
        if close < 0 or close == len(text) - 1:
            return start
        if text[close + 1] in "([" and text.find(")" if text[close + 1] == "(" else "]", close + 1) < 0:
            return start
        start = text.find("[", close)
    return len(text)


def _clean(text: str, line_start: bool) -> str:
    if not line_start:
        text = _NOT_A_LINE_START + text  # so `^` does not match where a line did not start
    text = _QUOTE_MARKER.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _ADDRESSES.sub(_address, text)
    text = _ORPHAN_DOMAIN.sub(" by email", text)
    text = _DROP_LINES.sub("", text)
    text = _LINE_MARKERS.sub("", text)
    text = _ROW_END.sub("", text)
    text = _CELL.sub(", ", text)
    text = _INLINE.sub("", text)
    return text if line_start else text.removeprefix(_NOT_A_LINE_START)
