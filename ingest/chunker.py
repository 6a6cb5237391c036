"""Split documents into passages the embedding model reads whole.

Structure first: every passage stays inside one section, under that section's heading trail (short
neighbouring sections share a passage under their common headings, their own headings kept in the
text). Then size: semchunk cuts a long section at its natural boundaries (blank line, line, sentence,
word) into units measured with the model's own tokenizer, and the units are packed into evenly sized
pieces, so that the heading trail, the passage and the special tokens together stay near the target
and never pass the model's window. Pieces overlap by a sentence or so, so an answer that straddles a
boundary is still whole in one of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import semchunk
from tokenizers import Tokenizer

from app.knowledge.records import CHUNK_TARGET_TOKENS, HEADING_SEPARATOR, embedded_text
from ingest.document import Document, Section

OVERLAP = 0.15  # of the passage budget
_MAX_TRAIL_SHARE = 3  # the heading trail may take at most a third of the target


@dataclass(frozen=True)
class Passage:
    headings: tuple[str, ...]
    text: str


class Chunker:
    def __init__(self, tokenizer_file: Path, window: int, target: int = CHUNK_TARGET_TOKENS) -> None:
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # tokenizer.json files often carry the model's truncation and padding; counting needs neither.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.window = window
        self.target = min(target, window)
        self._specials = len(self._tokenizer.encode("").ids)

    def count(self, text: str) -> int:
        """Word pieces in `text`, without special tokens."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def embedded_length(self, passage: Passage) -> int:
        """Word pieces the model reads for this passage, special tokens included."""
        return len(self._tokenizer.encode(embedded_text(passage.headings, passage.text)).ids)

    def split(self, document: Document) -> list[Passage]:
        passages: list[Passage] = []
        for headings, text in self._merge_small(document.sections):
            headings = self._fit_trail(headings)
            budget = self.target - self._specials - self.count(HEADING_SEPARATOR.join(headings))
            passages.extend(self._pieces(headings, text, budget))
        return passages

    def _merge_small(self, sections: Sequence[Section]) -> list[tuple[tuple[str, ...], str]]:
        """Neighbouring sections that fit in one passage together share it, under the headings they
        have in common; the headings they do not share stay on top of their text. A passage of one short
        line retrieves poorly; this avoids them and keeps the structure."""
        merged: list[tuple[tuple[str, ...], str]] = []
        for section in sections:
            if merged:
                headings, text = merged[-1]
                common = _common_prefix(headings, section.headings)
                if common:
                    joined = f"{_body(headings, common, text)}\n\n{_body(section.headings, common, section.text)}"
                    if self._specials + self.count(HEADING_SEPARATOR.join(common)) + self.count(joined) <= self.target:
                        merged[-1] = (common, joined)
                        continue
            merged.append((section.headings, section.text))
        return merged

    def _pieces(self, headings: tuple[str, ...], text: str, budget: int) -> Iterator[Passage]:
        for piece in self._pack(text, budget):
            passage = Passage(headings, piece)
            # Pieces are measured alone; re-split in the rare case the joined text tokenises longer.
            if self.embedded_length(passage) <= self.window or budget <= 1:
                yield passage
            else:
                yield from self._pieces(headings, piece, budget // 2)

    def _pack(self, text: str, budget: int) -> list[str]:
        """Evenly sized pieces of whole sentences (or lines, or words), each sharing a tail with the last."""
        text = text.strip()
        if self.count(text) <= budget:
            return [text]
        overlap = max(1, int(budget * OVERLAP))
        # Units no longer than the overlap, so a piece can always share its last unit with the next.
        _, spans = semchunk.chunk(text, overlap, self.count, offsets=True, memoize=False)
        sizes = [self.count(text[start:end]) for start, end in spans]
        aim = min(budget, math.ceil(sum(sizes) / math.ceil(sum(sizes) / budget)) + overlap)
        pieces: list[str] = []
        first = 0
        while True:
            last, size = first, sizes[first]
            while last + 1 < len(spans) and size + sizes[last + 1] <= aim:
                last += 1
                size += sizes[last]
            pieces.append(text[spans[first][0] : spans[last][1]])
            if last + 1 == len(spans):
                return pieces
            next_first, tail = last + 1, 0
            while next_first - 1 > first and tail + sizes[next_first - 1] <= overlap:
                next_first -= 1
                tail += sizes[next_first]
            first = next_first

    def _fit_trail(self, headings: tuple[str, ...]) -> tuple[str, ...]:
        """Keep the title and the nearest headings; a trail never crowds out the passage."""
        limit = self.target // _MAX_TRAIL_SHARE
        trail = list(headings)
        while len(trail) > 2 and self.count(HEADING_SEPARATOR.join(trail)) > limit:
            del trail[1]
        if trail and self.count(HEADING_SEPARATOR.join(trail)) > limit:
            joined = HEADING_SEPARATOR.join(trail)
            offsets = self._tokenizer.encode(joined, add_special_tokens=False).offsets
            trail = [joined[: offsets[limit - 1][1]]]
        return tuple(trail)


def _common_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    return a[:common]


def _body(headings: tuple[str, ...], common: tuple[str, ...], text: str) -> str:
    """The text with the headings it does not share with its neighbour on top."""
    own = headings[len(common) :]
    return "\n".join(own) + "\n\n" + text if own else text
