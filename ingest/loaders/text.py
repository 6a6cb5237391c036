"""Plain text, with the heading conventions people use in .txt files.

A short first line is the title. A line underlined with === or --- is a heading (level 1 or 2), as
is a short ALL-CAPS line that starts a paragraph. The rest is prose, in paragraphs separated by blank
lines.
"""

from __future__ import annotations

import re

from ingest.decode import decode_text
from ingest.document import Document, DocumentBuilder

_UNDERLINE = re.compile(r"^\s*(=+|-+)\s*$")
_MAX_CAPS_HEADING = 80


def load_text(data: bytes) -> Document:
    lines = decode_text(data).splitlines()
    builder = DocumentBuilder()
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            builder.paragraph("\n".join(paragraph))
            paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        underline = _UNDERLINE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if line.strip() and underline and len(underline.group(1)) >= 3:
            flush()
            builder.heading(1 if underline.group(1)[0] == "=" else 2, line)
            i += 2
            continue
        if not line.strip():
            flush()
        elif not paragraph and builder.title is None and _is_title(line):
            builder.heading(1, line)
        elif not paragraph and _is_caps_heading(line):
            builder.heading(2, line)
        else:
            paragraph.append(line)
        i += 1
    flush()
    return builder.build()


def _is_title(line: str) -> bool:
    text = line.strip()
    return 0 < len(text) <= _MAX_CAPS_HEADING and not text.endswith((".", ",", ";", ":", "!", "?"))


def _is_caps_heading(line: str) -> bool:
    text = line.strip()
    return (
        len(text) <= _MAX_CAPS_HEADING
        and any(ch.isalpha() for ch in text)
        and text == text.upper()
        and not text.endswith((".", ",", ";", ":"))
    )
