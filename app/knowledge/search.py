"""One build as the server searches it: nearest passages from Chroma, keyword scores in memory.

A turn asks Chroma for the ids and distances of the nearest records, keeps those of the live build
(whose ids this process knows), and fetches documents only for the few passages it hands on. Chroma's
own filter on the build (`visible_in`) is exact but reads every matching id from SQLite on each query
(about 5 ms per 1,000 passages), so it is the fallback for the rare turn whose nearest records are
mostly of other builds, never the rule.
"""

from __future__ import annotations

import copy
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from app.knowledge.keywords import KeywordIndex, Vocabulary
from app.knowledge.records import ChunkRecord, visible_in

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

_FETCH_BATCH = 1000  # ids per request: under SQLite's limit on query variables
# Passages handed on lately, by record id (a record never changes): callers ask about the same few
# things, and a turn whose passages are all here makes one request to Chroma instead of two.
RECENT_PASSAGES = 2000


@dataclass(frozen=True)
class Hit:
    row: int
    similarity: float  # cosine, higher is closer


class LiveBuild:
    """Immutable once made, so turns share it without locks; `updated` makes the next one."""

    def __init__(
        self,
        build_id: int,
        collection: Collection,
        ids: list[str],
        keywords: KeywordIndex,
        text_keys: list[int],
        sources: list[str],
        stored: int,
        recent: _Recent | None = None,
    ) -> None:
        self.build_id = build_id
        self.collection = collection
        self.ids = ids  # record ids, one per row
        self.rows = {record: row for row, record in enumerate(ids)}
        self.keywords = keywords
        self.text_keys = text_keys  # per row, equal for equal passage texts (a copied page)
        self.sources = sources  # per row, the document it is from
        # Records of other builds in the collection when this one was loaded: how far to over-ask.
        self._others = max(stored - len(ids), 0)
        self._recent = recent or _Recent(RECENT_PASSAGES)

    @classmethod
    def load(cls, collection: Collection, build_id: int, previous: LiveBuild | None = None) -> LiveBuild:
        """Read the build's ids, and texts only for passages `previous` does not already hold."""
        ids = collection.get(where=visible_in(build_id), include=[])["ids"]
        stored = collection.count()
        if previous is None or previous.collection.id != collection.id:
            added, texts, keys, sources = _texts(collection, ids)
            return cls(build_id, collection, added, KeywordIndex.of(texts, Vocabulary()), keys, sources, stored)
        current = set(ids)
        keep = [row for row, record in enumerate(previous.ids) if record in current]
        added, texts, keys, sources = _texts(collection, [record for record in ids if record not in previous.rows])
        return cls(
            build_id,
            collection,
            [previous.ids[row] for row in keep] + added,
            previous.keywords.changed(np.array(keep, dtype=np.int64), texts),
            [previous.text_keys[row] for row in keep] + keys,
            [previous.sources[row] for row in keep] + sources,
            stored,
            previous._recent,
        )

    def nearest(self, embedding: np.ndarray, k: int) -> list[Hit]:
        """The k nearest passages of this build, by cosine similarity, best first."""
        k = min(k, len(self.ids))
        if k <= 0:
            return []
        ask = k + min(self._others, 3 * k)
        found = self.collection.query(query_embeddings=[embedding], n_results=ask, include=["distances"])
        hits = self._ours(found)
        if len(hits) < k:  # the nearest records are mostly other builds': let Chroma filter
            found = self.collection.query(
                query_embeddings=[embedding], n_results=k, where=visible_in(self.build_id), include=["distances"]
            )
            hits = self._ours(found)
        return hits[:k]

    def records(self, rows: Sequence[int]) -> dict[int, ChunkRecord]:
        """The stored passages of these rows, in their order (one removed since is left out)."""
        found = self._recent.get([self.ids[row] for row in rows])
        missing = [self.ids[row] for row in rows if self.ids[row] not in found]
        if missing:
            fetched = self.collection.get(ids=missing, include=["documents", "metadatas"])
            for record, document, metadata in zip(
                fetched["ids"], fetched["documents"], fetched["metadatas"], strict=True
            ):
                found[record] = ChunkRecord.from_stored(record, document or "", dict(metadata or {}))
            self._recent.put({record: found[record] for record in missing if record in found})
        return {row: found[self.ids[row]] for row in rows if self.ids[row] in found}

    def all_records(self) -> list[ChunkRecord]:
        """Every passage of the build, read page by page (tests, tools)."""
        rows = range(len(self.ids))
        return [r for start in rows[::_FETCH_BATCH] for r in self.records(rows[start : start + _FETCH_BATCH]).values()]

    def on(self, collection: Collection) -> LiveBuild:
        """The same build, searched through another client's handle on its collection."""
        build = copy.copy(self)
        build.collection = collection
        return build

    def warm(self) -> None:
        """Load the collection's vector index now rather than in a caller's turn."""
        if self.ids:
            self.collection.query(query_embeddings=[self._probe()], n_results=1, include=[])

    def _probe(self) -> list[float]:
        return list(self.collection.get(ids=[self.ids[0]], include=["embeddings"])["embeddings"][0])

    def _ours(self, found: Any) -> list[Hit]:
        return [
            Hit(self.rows[record], 1.0 - distance)
            for record, distance in zip(found["ids"][0], found["distances"][0], strict=True)
            if record in self.rows
        ]


def _texts(collection: Collection, ids: Sequence[str]) -> tuple[list[str], list[str], list[int], list[str]]:
    """The records found, what keyword scoring reads of each (heading trail and passage), a key per
    passage text, and each one's document (one string per document)."""
    found_ids: list[str] = []
    texts: list[str] = []
    keys: list[int] = []
    sources: list[str] = []
    for start in range(0, len(ids), _FETCH_BATCH):
        found = collection.get(ids=list(ids[start : start + _FETCH_BATCH]), include=["documents", "metadatas"])
        for record, document, metadata in zip(found["ids"], found["documents"], found["metadatas"], strict=True):
            chunk = ChunkRecord.from_stored(record, document or "", dict(metadata or {}))
            found_ids.append(record)
            texts.append(chunk.embedded_text)
            keys.append(hash(chunk.text))
            sources.append(sys.intern(chunk.source))
    return found_ids, texts, keys, sources


class _Recent:
    """A small least-recently-used map of passages, shared by the builds of one process."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, ChunkRecord] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, records: Sequence[str]) -> dict[str, ChunkRecord]:
        with self._lock:
            found = {record: self._items[record] for record in records if record in self._items}
            for record in found:
                self._items.move_to_end(record)
            return found

    def put(self, items: dict[str, ChunkRecord]) -> None:
        with self._lock:
            self._items.update(items)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
