"""Keyword scores (BM25) for the live build's passages, held in each server process's memory.

The installed Chroma filters on words in documents ($contains) but does not rank by them on a local
store or `chroma run` (its hybrid `search` is for Chroma's distributed and hosted deployments only),
so BM25 is scored here: one sparse matrix of term frequencies per process (about 7 MB per 10,000
passages, measured by `make bench`), no texts and no vectors. A new build is applied as a change of
rows (the passages that left, the passages that came), so a one-file edit does not re-read the index.

Terms and scores are bm25s's defaults, which retrieval was tuned with (`make eval`): its tokenizer
and English stop words, the Snowball stemmer, and the "lucene" variant (k1 1.5, b 0.75).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

K1 = 1.5
B = 0.75
_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_STOPWORDS = frozenset(STOPWORDS_EN)
_stemmer = Stemmer.Stemmer("english")


def terms(text: str) -> list[str]:
    """bm25s's tokenisation of one text (lower case, words of two or more characters, no stop words,
    stemmed), without its per-call bookkeeping."""
    return _stemmer.stemWords([w for w in _TOKEN.findall(text.lower()) if w not in _STOPWORDS])


class Vocabulary:
    """Term → column. It only grows, and is shared by every version of a process's index, so a term
    keeps its column across builds; a version ignores columns newer than itself."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, words: Sequence[str]) -> list[int]:
        return [self._ids.setdefault(w, len(self._ids)) for w in words]

    def find(self, words: Sequence[str]) -> list[int]:
        return [i for i in map(self._ids.get, words) if i is not None]


class KeywordIndex:
    """BM25 over a fixed list of passages (rows). Immutable: `changed` returns a new index, so turns
    keep scoring the old one while it is made."""

    def __init__(self, vocabulary: Vocabulary, frequencies: sp.csr_matrix) -> None:
        self.vocabulary = vocabulary
        self._frequencies = frequencies
        rows, columns = frequencies.shape
        lengths = np.asarray(frequencies.sum(axis=1)).ravel()
        average = lengths.mean() if rows else 1.0
        df = np.bincount(frequencies.indices, minlength=columns)
        idf = np.log(1 + (rows - df + 0.5) / (df + 0.5))
        coo = frequencies.tocoo()
        tf = coo.data.astype(np.float32)
        norm = K1 * ((1 - B) + B * lengths[coo.row] / (average or 1.0))
        weights = (idf[coo.col] * tf / (norm + tf)).astype(np.float32)
        self._weights = sp.csc_matrix((weights, (coo.row, coo.col)), shape=(rows, columns))

    @classmethod
    def of(cls, texts: Sequence[str], vocabulary: Vocabulary | None = None) -> KeywordIndex:
        vocabulary = vocabulary or Vocabulary()
        return cls(vocabulary, _frequencies(vocabulary, texts))

    @property
    def rows(self) -> int:
        return self._weights.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(
            a.nbytes
            for m in (self._frequencies, self._weights)
            for a in (m.data, m.indices, m.indptr)  # type: ignore[attr-defined]
        )

    def changed(self, keep: np.ndarray, added: Sequence[str]) -> KeywordIndex:
        """The rows `keep` (indices, in order), then one row per added text."""
        new = _frequencies(self.vocabulary, added)
        kept = self._frequencies[keep]
        columns = max(kept.shape[1], new.shape[1])
        kept.resize(kept.shape[0], columns)
        new.resize(new.shape[0], columns)
        return KeywordIndex(self.vocabulary, sp.vstack([kept, new], format="csr"))

    def scores(self, words: Sequence[str]) -> np.ndarray | None:
        """Each row's BM25 score for a question's `terms`, or None when none of them is in the index. A
        term said twice counts twice, as in bm25s."""
        columns = [c for c in self.vocabulary.find(words) if c < self._weights.shape[1]]
        if not columns:
            return None
        scores = np.zeros(self.rows, dtype=np.float32)
        indptr, indices, data = self._weights.indptr, self._weights.indices, self._weights.data
        for column in columns:
            start, end = indptr[column], indptr[column + 1]
            scores[indices[start:end]] += data[start:end]
        return scores

    def found_in(self, words: set[str], row: int) -> int:
        """How many of `words` (terms) the passage of `row` contains."""
        start, end = self._frequencies.indptr[row], self._frequencies.indptr[row + 1]
        return len(set(self.vocabulary.find(list(words))).intersection(self._frequencies.indices[start:end].tolist()))


def _frequencies(vocabulary: Vocabulary, texts: Sequence[str]) -> sp.csr_matrix:
    indptr, indices, counts = [0], [], []
    for text in texts:
        columns, tf = np.unique(np.array(vocabulary.add(terms(text)), dtype=np.int32), return_counts=True)
        indices.append(columns)
        counts.append(tf.astype(np.float32))
        indptr.append(indptr[-1] + len(columns))
    return sp.csr_matrix(
        (
            np.concatenate(counts) if counts else np.zeros(0, np.float32),
            np.concatenate(indices) if indices else np.zeros(0, np.int32),
            np.array(indptr),
        ),
        shape=(len(texts), len(vocabulary)),
    )
