"""HTML through BeautifulSoup: h1-h6 as headings, block elements as paragraphs, rows as lines.

Scripts, styles and navigation menus are dropped; they are not content anyone would ask about.
"""

from __future__ import annotations

import re

from bs4 import BeautifulSoup, Comment, NavigableString, Tag

from ingest.decode import NOT_TEXT
from ingest.document import Document, DocumentBuilder, Unreadable

_DROP = ("script", "style", "noscript", "template", "svg", "iframe", "nav", "head")
_WHITESPACE = re.compile(r"\s+")
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_LINES = frozenset({"li", "dt", "dd"})
_BLOCKS = frozenset(
    {
        "p", "div", "section", "article", "main", "header", "footer", "aside", "ul", "ol", "dl",
        "blockquote", "table", "thead", "tbody", "tfoot", "figure", "figcaption", "caption", "address",
        "hr", "body", "html", "form", "fieldset", "details", "summary",
    }
)  # fmt: skip


def load_html(data: bytes) -> Document:
    if b"\x00" in data:
        raise Unreadable(NOT_TEXT)
    soup = BeautifulSoup(data, "html.parser")
    # The page's own h1 names it better than <title>, which usually carries the site name too.
    named = soup.find("h1") or soup.find("title")
    title = named.get_text(" ", strip=True) if named else None
    for tag in soup.find_all(_DROP):
        tag.decompose()
    builder = DocumentBuilder(title=title or None)
    walker = _Walker(builder)
    walker.walk(soup.body or soup)
    walker.flush()
    return builder.build()


class _Walker:
    def __init__(self, builder: DocumentBuilder) -> None:
        self.builder = builder
        self.inline: list[str] = []

    def walk(self, node: Tag) -> None:
        for child in node.children:
            if isinstance(child, Comment):
                continue
            if isinstance(child, NavigableString):
                self.inline.append(_WHITESPACE.sub(" ", str(child)))
            elif isinstance(child, Tag):
                self._element(child)

    def _element(self, tag: Tag) -> None:
        name = tag.name
        if name in _HEADINGS:
            self.flush()
            self.builder.heading(_HEADINGS[name], tag.get_text(" ", strip=True))
        elif name == "tr":
            self.flush()
            cells = (cell.get_text(" ", strip=True) for cell in tag.find_all(["th", "td"]))
            self.builder.line(" | ".join(cell for cell in cells if cell))
        elif name == "pre":
            self.flush()
            self.builder.paragraph(tag.get_text())
        elif name == "br":
            self.inline.append("\n")
        elif name in _LINES:
            self.flush()
            self.walk(tag)
            self.flush(as_line=True)
        elif name in _BLOCKS:
            self.flush()
            self.walk(tag)
            self.flush()
        else:
            self.walk(tag)

    def flush(self, as_line: bool = False) -> None:
        text = "".join(self.inline).strip()
        self.inline = []
        if not text:
            return
        if as_line:
            self.builder.line(f"- {' '.join(text.split())}")
        else:
            self.builder.paragraph(text)
