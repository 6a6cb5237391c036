"""Hybrid retrieval over the live index build: dense (Chroma) and BM25, fused, with abstention.

Whether the documents answer at all is decided by `abstention.py` from signals of this same search
(`measure`): no request or model beyond the ranking's own.

Everything blocking (embedding the query, the Chroma requests, BM25 scoring) runs in one worker
thread per turn, so a caller's turn never delays another caller's audio on the event loop. A build
made live by `make ingest` is picked up between turns: the next one is prepared beside the current
one (only its changed passages are read) and swapped in whole, so a search never mixes two builds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app.knowledge.abstention import AbstentionModel, Signals, load_model
from app.knowledge.embedding import QueryEncoder
from app.knowledge.keywords import terms
from app.knowledge.manifest import Manifest
from app.knowledge.search import Hit, LiveBuild
from app.knowledge.store import StoreBusy, build_state, chunk_collection, http_client, open_embedded, store_lock
from app.settings import Settings

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

log = logging.getLogger("switchboard.retrieval")

CANDIDATES = 40  # from each ranking, before fusion
PASSAGES = 4  # handed to the model
# Cosine plus a little BM25 (keyword evidence: product names, error messages), the weight chosen on
# the helpcenter dev set with `make eval`. A document ranks by its best passage.
BM25_WEIGHT = 0.1
RELOAD_EVERY_S = 1.0


@dataclass(frozen=True)
class Passage:
    id: str
    source: str
    headings: tuple[str, ...]
    text: str
    score: float  # cosine plus weighted keyword score, for ordering
    similarity: float  # cosine to the question (0 when only BM25 found it)


@dataclass(frozen=True)
class Retrieval:
    passages: tuple[Passage, ...]
    build_id: int | None
    seconds: float
    signals: Signals
    unanswerable: float  # the abstention model's probability that the documents don't answer
    abstain: bool  # they don't: say so, hand the model no passages, note a knowledge gap


@dataclass(frozen=True)
class Candidates:
    """What one search looked at, beyond the passages it hands on: what abstention is decided from."""

    words: list[str]  # the question's keyword terms
    nearest: list[Hit]  # by meaning, best first
    keyword_row: int | None  # the best keyword match (None: no question term is in the index)
    first: int | None  # the passage ranked first


def search(build: LiveBuild, embedding: np.ndarray, query: str, k: int) -> tuple[list[Passage], Candidates]:
    """The best passages, by cosine plus weighted keyword score; the same text under two sources (a
    copied page) is said once."""
    nearest = build.nearest(embedding, CANDIDATES)
    words = terms(query)
    keyword_scores = _keyword_scores(build, words)
    similarity = {hit.row: hit.similarity for hit in nearest}
    score = dict(similarity)
    for row, keyword_score in keyword_scores.items():
        score[row] = score.get(row, 0.0) + BM25_WEIGHT * keyword_score
    chosen: list[int] = []
    seen: set[int] = set()
    for row in sorted(score, key=score.__getitem__, reverse=True):
        if build.text_keys[row] not in seen:
            seen.add(build.text_keys[row])
            chosen.append(row)
            if len(chosen) == k:
                break
    passages = [
        Passage(record.id, record.source, record.headings, record.text, score[row], similarity.get(row, 0.0))
        for row, record in build.records(chosen).items()
    ]
    keyword_row = max(keyword_scores, key=keyword_scores.__getitem__) if keyword_scores else None
    return passages, Candidates(words, nearest, keyword_row, chosen[0] if chosen else None)


def _keyword_scores(build: LiveBuild, words: list[str]) -> dict[int, float]:
    """Keyword scores of the best passages, scaled so the best is 1."""
    scores = build.keywords.scores(words)
    if scores is None:
        return {}
    top = np.argpartition(-scores, CANDIDATES)[:CANDIDATES] if len(scores) > CANDIDATES else np.arange(len(scores))
    best = float(scores[top].max()) if len(top) else 0.0
    if best <= 0:
        return {}
    return {int(n): float(scores[n]) / best for n in top if scores[n] > 0}


def measure(build: LiveBuild, found: Candidates) -> Signals:
    """The abstention signals of one search (see `Signals`)."""
    if not found.nearest or found.first is None:
        return Signals(0.0, 0.0, 0.0, 0.0, 0.0)
    best = found.nearest[0]
    document = build.sources[best.row]
    other = next((hit.similarity for hit in found.nearest if build.sources[hit.row] != document), 0.0)
    similarities = [hit.similarity for hit in found.nearest]  # a few dozen: plain Python beats numpy here
    mean = sum(similarities) / len(similarities)
    spread = math.sqrt(sum((s - mean) ** 2 for s in similarities) / len(similarities))
    words = set(found.words)
    return Signals(
        similarity=best.similarity,
        margin=best.similarity - other,
        coverage=build.keywords.found_in(words, found.first) / len(words) if words else 0.0,
        agreement=float(found.keyword_row is not None and build.sources[found.keyword_row] == document),
        standout=(best.similarity - mean) / spread if spread > 0 else 0.0,
    )


class _Gate:
    """Turns pass freely; a swap of the embedded store waits for the turns inside and holds new ones."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._inside = 0
        self._closed = False

    @contextmanager
    def passage(self) -> Iterator[None]:
        with self._condition:
            while self._closed:
                self._condition.wait()
            self._inside += 1
        try:
            yield
        finally:
            with self._condition:
                self._inside -= 1
                self._condition.notify_all()

    @contextmanager
    def closed(self) -> Iterator[None]:
        with self._condition:
            self._closed = True
            while self._inside:
                self._condition.wait()
        try:
            yield
        finally:
            with self._condition:
                self._closed = False
                self._condition.notify_all()


class Retriever:
    """The server's view of the knowledge: the live build, replaced whole when a new one goes live."""

    def __init__(self, settings: Settings, encoder: QueryEncoder) -> None:
        self.settings = settings
        self.encoder = encoder
        self.abstention: AbstentionModel = load_model(settings.abstention_model)
        self.state = build_state(settings)
        self.build: LiveBuild | None = None
        self.error: str | None = None
        self._client: ClientAPI | None = None  # the embedded store, open while a build of it is live
        self._loading = threading.Lock()
        self._gate = _Gate()

    @property
    def ready(self) -> bool:
        return self.build is not None

    def load(self) -> None:
        """Follow the pointer to the live build if it moved (blocking; run it in a thread)."""
        with self._loading:
            try:
                live = self.state.pointer().live
                if live is None:
                    self.error = "no index has been built yet: run `make ingest`"
                    return
                if self.build is not None and self.build.build_id == live:
                    return
                manifest = Manifest.from_json(self.state.manifest(live))
                if manifest is None:
                    raise LookupError(f"build {live} has no manifest")
                if self.settings.chroma_server:
                    self._load_from_server(live, manifest.model_id)
                else:
                    self._load_embedded(live, manifest.model_id)
            except StoreBusy:  # an ingest is writing the embedded store: keep answering, look again next time
                if self.build is None:
                    self.error = "an ingest is writing the index; it will be loaded when it is done"
                return
            except Exception as exc:  # a broken index must not take the brain down
                self.error = f"the index could not be opened: {exc}"
                log.exception("index not loaded")
                return
            self.error = None
            build = self.build
            assert build is not None
            log.info(
                "index build %s live (%d passages; keyword index %.1f MB)",
                build.build_id,
                len(build.ids),
                build.keywords.nbytes / 1e6,
            )

    def _load_from_server(self, live: int, model_id: str) -> None:
        collection = chunk_collection(http_client(self.settings), model_id)
        if collection is None:
            raise LookupError(f"the collection of build {live} is missing")
        self.build = LiveBuild.load(collection, live, self.build)

    def _load_embedded(self, live: int, model_id: str) -> None:
        """This process's copy of the vector index only grows by reopening the store, so the next build
        is read through the open store (SQLite is current), then the store is reopened in one short
        pause of the turns."""
        with store_lock(self.settings.index_dir, exclusive=False, wait_seconds=0):
            prepared = None
            if self._client is not None:
                collection = chunk_collection(self._client, model_id)
                prepared = LiveBuild.load(collection, live, self.build) if collection is not None else None
            with self._gate.closed():
                self._close_store()
                self._client = open_embedded(self.settings.index_dir)
                collection = chunk_collection(self._client, model_id)
                if collection is None:
                    raise LookupError(f"the collection of build {live} is missing")
                build = prepared.on(collection) if prepared is not None else LiveBuild.load(collection, live)
                build.warm()
                self.build = build

    async def watch(self) -> None:
        """Between turns, pick up builds made live by `make ingest`."""
        while True:
            await asyncio.sleep(RELOAD_EVERY_S)
            await asyncio.to_thread(self.load)

    def retrieve_sync(self, query: str, k: int = PASSAGES) -> Retrieval:
        started = time.perf_counter()
        embedding = self.encoder.encode(query)
        with self._gate.passage():
            build = self.build
            if build is None:
                raise LookupError(self.error or "no index")
            passages, found = search(build, embedding, query, k)
            signals = measure(build, found)
        unanswerable = self.abstention.probability(signals)
        abstain = unanswerable >= self.abstention.threshold or not passages
        return Retrieval(tuple(passages), build.build_id, time.perf_counter() - started, signals, unanswerable, abstain)

    async def retrieve(self, query: str) -> Retrieval:
        return await asyncio.to_thread(self.retrieve_sync, query)

    def close(self) -> None:
        with self._gate.closed():
            self._close_store()

    def _close_store(self) -> None:
        self.build = None
        if self._client is not None:
            self._client.close()
            self._client = None
