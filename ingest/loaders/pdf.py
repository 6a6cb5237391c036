"""PDF through pypdf. Headings are found by type size: text set larger than the body text.

pypdf keeps the reading order; the visitor tells us the size each line was set in. Lines in a size
well above the body size are headings, the largest size being level 1. The outline (bookmarks), when
a PDF has one, names headings too.
"""

from __future__ import annotations

import logging
from collections import Counter
from io import BytesIO
from typing import Any

from pypdf import PdfReader

from ingest.document import Document, DocumentBuilder, Unreadable

_HEADING_RATIO = 1.15
_MAX_HEADING_CHARS = 150
_MAX_REASON_CHARS = 120

logging.getLogger("pypdf").setLevel(logging.ERROR)


def load_pdf(data: bytes) -> Document:
    try:
        reader = PdfReader(BytesIO(data))
        if reader.is_encrypted and not _decrypt(reader):
            raise Unreadable("encrypted PDF: it needs a password to open")
        pages = list(reader.pages)
        runs: list[tuple[str, float, float]] = []
        texts = [page.extract_text(visitor_text=_size_visitor(runs)) or "" for page in pages]
        outline = _outline_titles(reader)
    except Unreadable:
        raise
    except Exception as exc:
        raise Unreadable(f"damaged PDF ({_short(exc)})") from exc
    title = _metadata_title(reader)
    headings = {**_headings_by_size(runs), **outline}
    builder = DocumentBuilder(title=title)
    for text in texts:
        paragraph: list[str] = []
        for line in text.splitlines():
            level = headings.get(_key(line)) if len(line.strip()) <= _MAX_HEADING_CHARS else None
            if level is None:
                paragraph.append(line)
                continue
            builder.paragraph("\n".join(paragraph))
            paragraph = []
            builder.heading(level, line)
        builder.paragraph("\n".join(paragraph))
    return builder.build()


def _decrypt(reader: PdfReader) -> bool:
    """Many PDFs are encrypted only against editing, with an empty password to open them."""
    try:
        return bool(reader.decrypt(""))
    except Exception as exc:
        raise Unreadable(f"encrypted PDF: cannot be opened ({_short(exc)})") from exc


def _size_visitor(runs: list[tuple[str, float, float]]) -> Any:
    """Collect (text, type size, baseline) for every text run pypdf draws."""

    def visit(text: str, cm: list[float], tm: list[float], font: Any, size: float) -> None:
        if text.strip():
            scale = abs(tm[3] * cm[3]) or 1.0
            runs.append((text, round(size * scale, 1), round(tm[5] * cm[3] + cm[5], 1)))

    return visit


def _headings_by_size(runs: list[tuple[str, float, float]]) -> dict[str, int]:
    chars = Counter[float]()
    for text, size, _ in runs:
        chars[size] += len(text)
    if not chars:
        return {}
    body = chars.most_common(1)[0][0]
    sizes = sorted({size for size in chars if size >= body * _HEADING_RATIO}, reverse=True)
    level_of = {size: level for level, size in enumerate(sizes, start=1)}
    # A heading line may be drawn as several runs: join the runs that share a size and a baseline.
    lines: list[tuple[float, float, list[str]]] = []
    for text, size, baseline in runs:
        if lines and lines[-1][:2] == (size, baseline):
            lines[-1][2].append(text)
        else:
            lines.append((size, baseline, [text]))
    headings: dict[str, int] = {}
    for size, _, parts in lines:
        if size in level_of and (key := _key("".join(parts))):
            headings.setdefault(key, level_of[size])
    return headings


def _outline_titles(reader: PdfReader) -> dict[str, int]:
    titles: dict[str, int] = {}

    def walk(items: list[Any], level: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
            elif title := getattr(item, "title", None):
                titles[_key(title)] = level

    walk(reader.outline, 1)
    return titles


def _metadata_title(reader: PdfReader) -> str | None:
    try:
        title = reader.metadata.title if reader.metadata else None
    except Exception:
        return None
    return title.strip() if isinstance(title, str) and title.strip() else None


def _key(line: str) -> str:
    return " ".join(line.split()).casefold()


def _short(exc: Exception) -> str:
    return (str(exc) or type(exc).__name__)[:_MAX_REASON_CHARS]
