"""Bytes to text for the plain-text formats: UTF-8 first, then a detected legacy encoding.

Real knowledge bases hold files saved as Latin-1 or Windows-1252; those are decoded, not skipped.
Binary files that merely carry a text extension are refused here, before they reach the index.
"""

from __future__ import annotations

import codecs
import unicodedata

from ingest.document import Unreadable

_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_MAX_BAD_CHAR_RATIO = 0.01
_CHAOS_MARGIN = 0.05
_WESTERN = frozenset({"cp1252", "latin_1", "iso8859_15"})
NOT_TEXT = "binary content, not text"


def decode_text(data: bytes) -> str:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return _checked(data.decode(encoding, errors="replace"))
    if b"\x00" in data:
        raise Unreadable(NOT_TEXT)
    try:
        return _checked(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data))
    if not matches:
        raise Unreadable(NOT_TEXT)
    # Detection cannot tell the single-byte Latin code pages apart on short texts. When a reading as
    # clean as the favourite agrees with Windows-1252 (which covers Latin-1's letters), take that:
    # for a knowledge base in a Western language it is by far the likelier.
    best = min(matches, key=lambda m: m.chaos)
    try:
        western: str | None = data.decode("cp1252")
    except UnicodeDecodeError:
        western = None
    for match in matches:
        if match.chaos <= best.chaos + _CHAOS_MARGIN and (match.encoding in _WESTERN or str(match) == western):
            return _checked(str(western))
    return _checked(str(best))


def _checked(text: str) -> str:
    bad = sum(1 for ch in text if ch == "\ufffd" or (unicodedata.category(ch) == "Cc" and ch not in "\t\n\r\f"))
    if text and bad / len(text) > _MAX_BAD_CHAR_RATIO:
        raise Unreadable(NOT_TEXT)
    return text
