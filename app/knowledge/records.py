"""What one indexed passage is: its identity, the text the model reads, and how it is stored in Chroma.

A chunk is identified by (model, chunker version, source, text). The index keeps one record per
chunk and per unbroken run of builds that contain it: the record carries that run as two integers,
`first` and `last`, and a build sees exactly the records whose run covers it. A chunk of the newest
build has `last = OPEN` until a later build leaves it out. So a build that changes a few chunks
writes a few records, whatever the size of the index.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CHUNKER_VERSION = 1
CHUNK_TARGET_TOKENS = 200  # aim, in word pieces with heading trail and special tokens; the window is the hard cap
HEADING_SEPARATOR = " > "
OPEN = 2**31 - 1  # `last` of a record the newest build still contains


def embedded_text(headings: Sequence[str], text: str) -> str:
    """What the model reads: the heading trail on top of the passage, which helps retrieval a lot."""
    trail = HEADING_SEPARATOR.join(headings)
    return f"{trail}\n\n{text}" if trail else text


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def embed_key(model_id: str, embedded: str) -> str:
    """Embeddings are reused by this key: the same model has seen the same text."""
    return _digest(model_id, embedded)


def chunk_id(model_id: str, source: str, embedded: str) -> str:
    return f"c{CHUNKER_VERSION}-{_digest(model_id, str(CHUNKER_VERSION), source, embedded)[:40]}"


def record_id(chunk: str, first: int) -> str:
    """A chunk that leaves the index and comes back later gets a second record, for its second run."""
    return f"{chunk}@{first}"


def chunk_of(record: str) -> str:
    return record.rpartition("@")[0]


def visible_in(build: int) -> dict[str, Any]:
    """The Chroma filter for the records of one build."""
    return {"$and": [{"first": {"$lte": build}}, {"last": {"$gte": build}}]}


@dataclass(frozen=True)
class ChunkRecord:
    """One indexed passage. `text` is the passage as written (what the agent may speak)."""

    id: str  # the chunk id
    text: str
    source: str  # path relative to the knowledge directory, forward slashes
    headings: tuple[str, ...]  # document title first, then the section headings above the passage
    position: int  # ordinal of the chunk within its document
    embed_key: str
    file_sha256: str

    @classmethod
    def make(
        cls, model_id: str, source: str, headings: Sequence[str], position: int, text: str, file_sha256: str
    ) -> ChunkRecord:
        embedded = embedded_text(headings, text)
        return cls(
            id=chunk_id(model_id, source, embedded),
            text=text,
            source=source,
            headings=tuple(headings),
            position=position,
            embed_key=embed_key(model_id, embedded),
            file_sha256=file_sha256,
        )

    @property
    def embedded_text(self) -> str:
        return embedded_text(self.headings, self.text)

    def metadata(self, first: int) -> dict[str, str | int]:
        return {
            "source": self.source,
            "headings": json.dumps(self.headings, ensure_ascii=False),
            "position": self.position,
            "embed_key": self.embed_key,
            "file_sha256": self.file_sha256,
            "chunker": CHUNKER_VERSION,
            "first": first,
            "last": OPEN,
        }

    @classmethod
    def from_stored(cls, record: str, document: str, metadata: dict[str, Any]) -> ChunkRecord:
        return cls(
            id=chunk_of(record),
            text=document,
            source=str(metadata["source"]),
            headings=tuple(json.loads(str(metadata["headings"]))),
            position=int(metadata["position"]),
            embed_key=str(metadata["embed_key"]),
            file_sha256=str(metadata["file_sha256"]),
        )
