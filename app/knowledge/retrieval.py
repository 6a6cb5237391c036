"""Hybrid retrieval over the live index build: dense (Chroma) and BM25, fused, with abstention.

Everything CPU-bound (embedding the query, the Chroma search, BM25 scoring) runs in one worker
thread per turn, so a caller's turn never delays another caller's audio on the event loop.
A new build made live by `make ingest` is loaded in the background and swapped in between turns.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from dataclasses import dataclass

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN
from threadpoolctl import threadpool_limits

from app.knowledge.index import LiveIndex, QueryEncoder, live_build_id, open_live_index
from app.settings import Settings

log = logging.getLogger("switchboard.retrieval")

CANDIDATES = 40  # from each ranking, before fusion
PASSAGES = 4  # handed to the model
# Cosine plus a little BM25 (keyword evidence: product names, error messages), the weight chosen on
# the helpcenter dev set with `make eval`. A document ranks by its best passage.
BM25_WEIGHT = 0.1
# Below this cosine between the question and the best passage, the documents don't answer it.
# Calibrated on the eval sets (`make eval`); see the closing note of the retrieval issue.
ABSTAIN_BELOW = 0.42
RELOAD_EVERY_S = 1.0
IN_MEMORY_LIMIT = 200_000  # passages; 384 floats each is 300 MB at the limit

_stemmer = Stemmer.Stemmer("english")
# bm25s's own tokenizer rules, applied to one query without its per-call bookkeeping (about 0.4 ms).
_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_STOPWORDS = frozenset(STOPWORDS_EN)


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
    abstain: bool
    build_id: str | None
    seconds: float

    @property
    def best_similarity(self) -> float:
        return max((p.similarity for p in self.passages), default=0.0)


def _tokenize(texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer, return_ids=False, show_progress=False)


def query_terms(text: str) -> list[str]:
    """One query's BM25 terms: the same as `_tokenize([text])[0]`, in a tenth of the time."""
    return _stemmer.stemWords([w for w in _TOKEN.findall(text.lower()) if w not in _STOPWORDS])


class SearchableBuild:
    """One live build with its BM25 index. Immutable once made, so turns can share it without locks."""

    def __init__(self, index: LiveIndex) -> None:
        self.index = index
        self.build_id = index.build_id
        # A build never changes once live, so its vectors can be searched in memory: exact, and a
        # fraction of a millisecond instead of a round trip to the store on every turn. Builds too
        # big for that are searched in Chroma.
        self._vectors: np.ndarray | None = None
        if index.count <= IN_MEMORY_LIMIT:
            self.chunks, self._vectors = index.all_chunks_with_embeddings()
        else:
            self.chunks = index.all_chunks()
        self._by_id = {chunk.id: n for n, chunk in enumerate(self.chunks)}
        self._bm25: bm25s.BM25 | None = None
        if self.chunks:
            self._bm25 = bm25s.BM25()
            self._bm25.index(_tokenize([c.embedded_text for c in self.chunks]), show_progress=False)

    def search(self, embedding: np.ndarray, query: str, k: int) -> list[Passage]:
        """The best passages, by cosine plus weighted keyword score (a document ranks by its best one)."""
        similarity = self._nearest(embedding)
        score = dict(similarity)
        for n, keyword_score in self._bm25_scores(query).items():
            score[n] = score.get(n, 0.0) + BM25_WEIGHT * keyword_score
        ranked = sorted(score, key=score.__getitem__, reverse=True)
        passages: list[Passage] = []
        seen: set[str] = set()
        for n in ranked:
            chunk = self.chunks[n]
            if chunk.text in seen:  # the same passage under two sources (a copied page): say it once
                continue
            seen.add(chunk.text)
            passages.append(
                Passage(chunk.id, chunk.source, chunk.headings, chunk.text, score[n], similarity.get(n, 0.0))
            )
            if len(passages) == k:
                break
        return passages

    def _nearest(self, embedding: np.ndarray) -> dict[int, float]:
        """Cosine similarity of the nearest passages, by position in `chunks`."""
        if self._vectors is None:
            return {self._by_id[id_]: cosine for id_, cosine in self.index.nearest(embedding, CANDIDATES)}
        if not len(self._vectors):
            return {}
        cosines = self._vectors @ embedding
        top = np.argpartition(-cosines, CANDIDATES)[:CANDIDATES] if len(cosines) > CANDIDATES else range(len(cosines))
        return {int(n): float(cosines[n]) for n in top}

    def _bm25_scores(self, query: str) -> dict[int, float]:
        """Keyword scores of the best passages, scaled so the best is 1."""
        if self._bm25 is None:
            return {}
        ids = self._bm25.get_tokens_ids(query_terms(query))
        if not ids:
            return {}
        # Scored directly: bm25s's retrieve() starts a thread and progress bars on every call.
        scores = self._bm25.get_scores_from_ids(ids)
        top = np.argpartition(-scores, CANDIDATES)[:CANDIDATES] if len(scores) > CANDIDATES else np.arange(len(scores))
        best = float(scores[top].max()) if len(top) else 0.0
        if best <= 0:
            return {}
        return {int(n): float(scores[n]) / best for n in top if scores[n] > 0}

    def close(self) -> None:
        self.index.close()


class Retriever:
    """The server's view of the knowledge: the current build, swapped atomically when a new one goes live."""

    def __init__(self, settings: Settings, encoder: QueryEncoder) -> None:
        # One BLAS thread for the whole process: the search is one small matrix-vector product, and
        # OpenBLAS's second thread spins for about 10 ms of CPU after each one, taking a core from
        # the other calls.
        threadpool_limits(limits=1, user_api="blas")
        self.settings = settings
        self.encoder = encoder
        self.build: SearchableBuild | None = None
        # The build swapped out last time: a turn may still be searching it, so it is closed one swap later.
        self._retired: SearchableBuild | None = None
        self.error: str | None = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.build is not None

    def load(self) -> None:
        """Open the live build if it changed (blocking; run it in a thread)."""
        with self._lock:
            try:
                live = live_build_id(self.settings)
                if live is None:
                    self.error = "no index has been built yet: run `make ingest`"
                    return
                if self.build is not None and self.build.build_id == live:
                    return
                index = open_live_index(self.settings)
                if index is None:
                    self.error = "no index has been built yet: run `make ingest`"
                    return
                build = SearchableBuild(index)
            except Exception as exc:  # a broken index must not take the brain down
                self.error = f"the index could not be opened: {exc}"
                log.exception("index not loaded")
                return
            if self._retired is not None:
                self._retired.close()
            self._retired, self.build, self.error = self.build, build, None
            log.info("index build %s live (%d passages)", build.build_id, len(build.chunks))

    async def watch(self) -> None:
        """Between turns, pick up builds made live by `make ingest`."""
        while True:
            await asyncio.sleep(RELOAD_EVERY_S)
            await asyncio.to_thread(self.load)

    def retrieve_sync(self, query: str, k: int = PASSAGES) -> Retrieval:
        started = time.perf_counter()
        build = self.build
        if build is None:
            raise LookupError(self.error or "no index")
        embedding = self.encoder.encode(query)
        passages = tuple(build.search(embedding, query, k))
        best = max((p.similarity for p in passages), default=0.0)
        return Retrieval(passages, best < ABSTAIN_BELOW, build.build_id, time.perf_counter() - started)

    async def retrieve(self, query: str) -> Retrieval:
        return await asyncio.to_thread(self.retrieve_sync, query)

    def close(self) -> None:
        for build in (self.build, self._retired):
            if build is not None:
                build.close()
        self.build = self._retired = None
