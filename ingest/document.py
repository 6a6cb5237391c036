"""What every loader produces: a document as sections, each under its heading trail.

Loaders differ in how they find headings and paragraphs; this builder is the one place that turns
that stream into sections, so every format gets the same trail rules and text clean-up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_LEADER = re.compile(r"(?:\s?\.){4,}\s?|_{4,}")  # dotted price-list leaders and fill-in lines
_MAX_HEADING_CHARS = 200


class Unreadable(Exception):
    """The file cannot be ingested. The message is the reason shown in the report."""


@dataclass(frozen=True)
class Section:
    headings: tuple[str, ...]  # document title first, then the section headings
    text: str


@dataclass(frozen=True)
class Document:
    title: str | None
    sections: tuple[Section, ...]


def clean_line(text: str) -> str:
    return _SPACES.sub(" ", _LEADER.sub(" ... ", text)).strip()


def clean_block(text: str) -> str:
    """Tidy spaces line by line, keeping line breaks (lists, tables and addresses depend on them)."""
    lines = (clean_line(line) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


@dataclass
class DocumentBuilder:
    """Feed headings, paragraphs and lines in reading order; get sections under their headings.

    The title is the one given (file metadata) or else the first heading that comes before any text.
    """

    title: str | None = None
    _stack: list[tuple[int, str]] = field(default_factory=list)
    _blocks: list[str] = field(default_factory=list)
    _lines: list[str] = field(default_factory=list)
    _sections: list[Section] = field(default_factory=list)
    _seen_text: bool = False

    def heading(self, level: int, text: str) -> None:
        text = clean_line(text)[:_MAX_HEADING_CHARS]
        if not text:
            return
        self._flush_section()
        if self.title is None and not self._seen_text and not self._stack:
            self.title = text
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, text))

    def paragraph(self, text: str) -> None:
        """A block of prose: separated from its neighbours by a blank line."""
        self.end_block()
        if text := clean_block(text):
            self._blocks.append(text)
            self._seen_text = True

    def line(self, text: str) -> None:
        """A list item or table row: consecutive lines stay together as one block."""
        if text := clean_line(text):
            self._lines.append(text)
            self._seen_text = True

    def build(self) -> Document:
        self._flush_section()
        return Document(title=self.title, sections=tuple(self._sections))

    def _trail(self) -> tuple[str, ...]:
        headings = [text for _, text in self._stack]
        if self.title and (not headings or headings[0].casefold() != self.title.casefold()):
            headings.insert(0, self.title)
        return tuple(headings)

    def end_block(self) -> None:
        """Close the current run of lines, so the next lines start a block of their own."""
        if self._lines:
            self._blocks.append("\n".join(self._lines))
            self._lines = []

    def _flush_section(self) -> None:
        self.end_block()
        if self._blocks:
            self._sections.append(Section(self._trail(), "\n\n".join(self._blocks)))
            self._blocks = []
