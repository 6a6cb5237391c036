"""Word documents through python-docx: Title and Heading N styles are the structure; tables are rows."""

from __future__ import annotations

import re
from io import BytesIO
from typing import Any

import docx
from docx.enum.style import WD_STYLE_TYPE
from docx.table import Table
from docx.text.paragraph import Paragraph

from ingest.document import Document, DocumentBuilder, Unreadable

_HEADING_STYLE = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)
_MAX_REASON_CHARS = 120


def load_docx(data: bytes) -> Document:
    try:
        word = docx.Document(BytesIO(data))
    except Exception as exc:
        reason = (str(exc) or type(exc).__name__)[:_MAX_REASON_CHARS]
        raise Unreadable(f"damaged or not a Word .docx file ({reason})") from exc
    builder = DocumentBuilder(title=(word.core_properties.title or "").strip() or None)
    style_names = _StyleNames(word)
    for block in word.iter_inner_content():
        if isinstance(block, Paragraph):
            _paragraph(builder, block, style_names(block))
        elif isinstance(block, Table):
            _table(builder, block)
    return builder.build()


class _StyleNames:
    """Paragraph style names, looked up once per document: python-docx's `paragraph.style` scans
    every style in the document on each call (2 ms a paragraph, 40 s for a long manual)."""

    def __init__(self, word: Any) -> None:
        styles = word.styles
        self._names = {s.style_id: s.name or "" for s in styles if s.type == WD_STYLE_TYPE.PARAGRAPH}
        default = styles.default(WD_STYLE_TYPE.PARAGRAPH)
        self._default = (default.name or "") if default is not None else ""

    def __call__(self, paragraph: Paragraph) -> str:
        style_id = paragraph._p.style  # the paragraph's own style id, None for the default
        return self._names.get(style_id, self._default) if style_id else self._default


def _paragraph(builder: DocumentBuilder, paragraph: Paragraph, style: str) -> None:
    text = paragraph.text
    if style == "Title":
        builder.heading(1, text)
    elif heading := _HEADING_STYLE.match(style):
        builder.heading(int(heading.group(1)) + 1, text)
    elif style.startswith("List"):
        if text.strip():
            builder.line(f"- {text}")
    else:
        builder.paragraph(text)


def _table(builder: DocumentBuilder, table: Table) -> None:
    for row in table.rows:
        cells: list[str] = []
        for cell in row.cells:  # merged cells repeat; keep each text once per row
            text = " ".join(cell.text.split())
            if text and text not in cells:
                cells.append(text)
        builder.line(" | ".join(cells))
    builder.end_block()
