"""One loader per format. Each is a pure function from the file's bytes to a Document, and raises
Unreadable with a reason a person can act on. The parsing libraries are imported on first use.
"""

from __future__ import annotations

from ingest.document import Document

SUPPORTED_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".docx"})


def load_document(suffix: str, data: bytes) -> Document:
    suffix = suffix.lower()
    if suffix in (".md", ".markdown"):
        from ingest.loaders.markdown import load_markdown

        return load_markdown(data)
    if suffix == ".txt":
        from ingest.loaders.text import load_text

        return load_text(data)
    if suffix in (".html", ".htm"):
        from ingest.loaders.html import load_html

        return load_html(data)
    if suffix == ".pdf":
        from ingest.loaders.pdf import load_pdf

        return load_pdf(data)
    if suffix == ".docx":
        from ingest.loaders.docx import load_docx

        return load_docx(data)
    raise ValueError(f"no loader for {suffix}")
