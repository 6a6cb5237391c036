"""Answers without the model: whole sentences from the documents that answer the question.

Used when no model is configured, and when the model fails or misses its first-token deadline,
so the caller always hears something true from the documents or an honest "I don't know".

A passage is read as a person reads a page: headings and questions are signposts, not answers; a
list is said as one sentence with its lead-in ("The fee is waived if A, B, or C."); a table row is
said with its column names. The sentences closest in meaning to the question are spoken in the
document's order, without markup, labels ("Autopay discount:") or references ("(section 5)").
"""

from __future__ import annotations

import re

from app.brain.speech_filter import speakable
from app.knowledge.embedding import QueryEncoder
from app.knowledge.retrieval import Retrieval

NO_ANSWER = (
    "I'm sorry, I don't have information about that in our documents. "
    "I can take a message for the team, or you can ask me something else."
)
CANNOT_LOOK_UP = "I'm sorry, I can't look that up right now. I can take a message and someone will call you back."
PASSAGES = 2  # the best passages whose sentences compete
SECOND_WITHIN = 0.06  # a second sentence is added when it is nearly as close to the question
MAX_SENTENCE_CHARS = 320
MIN_WORDS = 4
# A sentence's score: its closeness to the question, plus its heading's (an FAQ question heading
# names what the paragraph under it answers), plus the share of the question's words it uses.
HEADING_WEIGHT = 0.25
WORD_WEIGHT = 0.1
AMOUNT_BONUS = 0.05  # "how much" / "when" is answered by a sentence with a number in it

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_LIST_ITEM = re.compile(r"^(?:[-*•]|\d{1,2}[.)])\s+")
_REFERENCE = re.compile(r"\s*\((?:see |section |§|clause |part )[^)]*\)|\s*\[\d+\]", re.IGNORECASE)
_LABEL = re.compile(r"^[A-Z][\w '’/-]{1,40}:\s+(?=[a-z])")
_ENDS_SENTENCE = re.compile(r"[.!][\"')\]]*$")
_LEADER = re.compile(r"^(\S.{2,80}?)\s*\.{3,}\s*(\S.{0,60})$")  # "Setup fee ..... $25"
_SIGNPOST = re.compile(r"^(?:This (?:page|guide|section|document|policy)\b|See |For more\b)")
_ASKS_AMOUNT = re.compile(
    r"\b(?:how (?:much|many|long|soon|fast)|cost|price|fee|charge|discount|when|what time)\b", re.I
)
_HAS_NUMBER = re.compile(r"\d")
_WORD = re.compile(r"[a-z0-9']{3,}")
_STOP = frozenset(
    "the and are was for you your our can what when where which who how does did have has much many there this "
    "that with about from will would could should they them its it's i'm don't not any get".split()
)


def extractive_answer(retrieval: Retrieval, question: str, encoder: QueryEncoder) -> str:
    """Blocking (embeds a few dozen sentences): run it in a thread."""
    if retrieval.abstain:
        return NO_ANSWER
    candidates = [
        (rank, position, sentence, heading)
        for rank, passage in enumerate(retrieval.passages[:PASSAGES])
        for position, (sentence, heading) in enumerate(spoken_sentences(passage.text, " ".join(passage.headings[-1:])))
    ]
    if not candidates:
        return NO_ANSWER
    asked = encoder.encode(question)
    words = _content_words(question)
    amount = _ASKS_AMOUNT.search(question) is not None
    headings = {heading: float(encoder.encode(heading) @ asked) if heading else 0.0 for *_, heading in candidates}
    scores = [
        float(encoder.encode(sentence) @ asked)
        + HEADING_WEIGHT * headings[heading]
        + WORD_WEIGHT * len(words & _content_words(sentence)) / max(len(words), 1)
        + (AMOUNT_BONUS if amount and _HAS_NUMBER.search(sentence) else 0.0)
        for _, _, sentence, heading in candidates
    ]
    best = max(range(len(candidates)), key=scores.__getitem__)
    chosen = [best]
    rank, position, *_ = candidates[best]
    # A second sentence only when it is the one before or after in the same passage.
    runner_up = max(
        (i for i, (r, p, *_) in enumerate(candidates) if r == rank and abs(p - position) == 1),
        key=scores.__getitem__,
        default=None,
    )
    if runner_up is not None and scores[runner_up] >= scores[best] - SECOND_WITHIN:
        chosen.append(runner_up)
    chosen.sort(key=lambda i: candidates[i][1])  # in the passage's own order
    return " ".join(candidates[i][2] for i in chosen)


def spoken_sentences(text: str, heading: str = "") -> list[tuple[str, str]]:
    """The sentences of a passage that could be an answer, read-aloud ready, each with its heading."""
    sentences: list[tuple[str, str]] = []
    for unit, under in _units(text, heading):
        for sentence in _SENTENCE_END.split(unit):
            spoken = _spoken(sentence)
            if _SIGNPOST.match(spoken):
                continue
            if len(spoken.split()) >= MIN_WORDS and len(spoken) <= MAX_SENTENCE_CHARS:
                sentences.append((spoken, under))
    return sentences


def _content_words(text: str) -> set[str]:
    return {word.rstrip("s") for word in _WORD.findall(text.lower()) if word not in _STOP}


def _spoken(sentence: str) -> str:
    sentence = _REFERENCE.sub("", sentence)
    unlabelled = _LABEL.sub("", sentence)
    if unlabelled != sentence:
        sentence = unlabelled[:1].upper() + unlabelled[1:]
    return speakable(sentence)


def _units(text: str, heading: str) -> list[tuple[str, str]]:
    """Paragraphs, lists and table rows as prose, each with the heading it is under; headings and
    questions are not units."""
    units: list[tuple[str, str]] = []
    paragraph: list[str] = []
    lead: str | None = None  # a paragraph ending in ':' that introduces a list
    items: list[str] = []
    header: list[str] | None = None

    def end_paragraph() -> None:
        nonlocal lead, heading
        if not paragraph:
            return
        text = " ".join(paragraph)
        paragraph.clear()
        if text.endswith(":"):
            lead = text
        elif _ENDS_SENTENCE.search(text):
            units.append((text, heading))
        else:
            heading = text

    def end_list() -> None:
        nonlocal lead
        if items:
            units.extend((sentence, heading) for sentence in _list_sentences(lead, items))
            items.clear()
        lead = None

    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            end_paragraph()
            continue
        if "|" in line:
            end_paragraph()
            end_list()
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if header is None:
                header = cells
            elif set("".join(cells)) - set(":- "):
                units.append((_row_sentence(header, cells), heading))
            continue
        header = None
        leader = _LEADER.match(line)
        if leader:
            end_paragraph()
            units.append((f"{leader.group(1)}, {leader.group(2)}.", heading))
            continue
        item = _LIST_ITEM.match(line)
        if item:
            end_paragraph()
            items.append(line[item.end() :])
            continue
        if items:
            end_list()
        if paragraph and _continues(paragraph[-1], line):
            paragraph.append(line)
        else:
            end_paragraph()
            paragraph.append(line)
    end_paragraph()
    end_list()
    return units


def _continues(previous: str, line: str) -> bool:
    """A line broken mid-sentence (PDF text), rather than a new paragraph after a heading."""
    if previous.endswith((".", "!", "?", ":")):
        return False
    return line[:1].islower() or len(previous) >= 60


def _list_sentences(lead: str | None, items: list[str]) -> list[str]:
    if all(_ENDS_SENTENCE.search(item) for item in items):
        return items  # each item is a sentence of its own
    if lead is None:
        return []  # fragments with nothing to hang them on
    body = " ".join(item if item.endswith((",", ";", " or", " and")) else f"{item}," for item in items)
    return [f"{lead.rstrip(':').rstrip()} {body.rstrip(',;.')}."]


def _row_sentence(header: list[str], cells: list[str]) -> str:
    """`Swift Gig, price $75 a month.` from a row and its column names."""
    pairs = [f"{_lower_first(name)} {value}" for name, value in zip(header[1:], cells[1:], strict=False) if value]
    return f"{cells[0]}, {', '.join(pairs)}." if pairs else ""


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:] if name[1:2].islower() else name
