"""Retrieval as a caller would feel it: keyword scores as retrieval was tuned with, a new build picked
up while the server runs, and never a passage of another build. Store tests run embedded and on a
Chroma server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import bm25s
import numpy as np
import pytest
import Stemmer

from app.knowledge.embedding import QueryEncoder
from app.knowledge.keywords import KeywordIndex, terms
from app.knowledge.retrieval import Retriever
from app.knowledge.store import store_lock
from app.settings import Settings
from ingest.pipeline import run_ingest
from tests.support.index import pointer, retriever

MakeSettings = Callable[..., Settings]

QUERIES = [
    "What time does the shop open on Saturdays?",
    "my router's light is blinking RED, what's that mean",
    "Error 0x80070005 when I install the IDE 2.3.1",
    "café opening hours — naïve résumé ÉTÉ",
    "I I a an the of to",  # only stopwords and one-letter words
    "",
    "   ",
    "ports_and_USB-C adapters; Nano33 BLE/Sense",
    "refunds refunding refunded refund",
]
HELPCENTER = Path(__file__).resolve().parents[2] / "shared" / "eval" / "helpcenter" / "docs"


@pytest.mark.parametrize("query", QUERIES)
def test_terms_are_bm25s_tokens(query: str) -> None:
    """Retrieval's weights were tuned with bm25s's tokeniser; ours must split words the same way."""
    stemmer = Stemmer.Stemmer("english")
    assert terms(query) == bm25s.tokenize([query], stopwords="en", stemmer=stemmer, return_ids=False)[0]


def _paragraphs() -> list[str]:
    if not HELPCENTER.is_dir():
        pytest.skip(f"{HELPCENTER} is missing")
    return [p for path in sorted(HELPCENTER.glob("*.md"))[:120] for p in path.read_text().split("\n\n") if p.strip()]


def test_keyword_scores_are_bm25s_scores_and_survive_a_change_of_rows() -> None:
    texts = _paragraphs()
    reference = bm25s.BM25()
    stemmer = Stemmer.Stemmer("english")
    reference.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    index = KeywordIndex.of(texts)
    for query in ("how do I reset my board", "error avrdude not in sync", "refund refund policy", "Nano 33 BLE"):
        ids = reference.get_tokens_ids(terms(query))
        assert np.allclose(index.scores(terms(query)), reference.get_scores_from_ids(ids), atol=1e-5)
    assert index.scores(terms("zzzz qqqq")) is None

    keep = np.arange(0, len(texts), 3)
    added = ["Upload fails with avrdude: stk500_recv(): programmer is not responding", "Reset the board twice."]
    changed = index.changed(keep, added)
    rebuilt = KeywordIndex.of([texts[i] for i in keep] + added)
    for query in ("programmer not responding", "reset the board", "how do I reset my board"):
        assert np.allclose(changed.scores(terms(query)), rebuilt.scores(terms(query)), atol=1e-6)


def test_a_build_made_live_is_found_without_a_restart_and_searches_never_mix_builds(
    index_settings: MakeSettings, tmp_path: Path
) -> None:
    """Every page names the release it belongs to; ingests change the release of all pages while the
    server's retriever follows the pointer and answers, and every answer's passages must be of one
    release: the one of the build it says it searched."""
    settings = index_settings()
    docs = tmp_path / "kb"
    docs.mkdir()

    def release(n: int) -> None:
        for page in range(6):
            (docs / f"page-{page}.md").write_text(
                f"# Release notes {page}\n\nThis is release {n}. The modem firmware of release {n} fixes "
                f"dropped calls on page {page}.\n"
            )

    release(1)
    builds = {run_ingest(settings).build: 1}
    with retriever(settings) as found:
        first = found.retrieve_sync("which release fixes dropped calls")
        assert first.build_id in builds and "release 1." in first.passages[0].text
        done = threading.Event()

        def ingest_releases() -> None:
            try:
                for n in range(2, 6):
                    release(n)
                    builds[run_ingest(settings).build] = n
            finally:
                done.set()

        writer = threading.Thread(target=ingest_releases)
        writer.start()
        seen: set[int] = set()
        while not done.is_set() or found.build is None or found.build.build_id != pointer(settings).live:
            found.load()  # what the server's watch does between turns
            answer = found.retrieve_sync("which release fixes dropped calls", k=6)
            if answer.build_id not in builds:
                continue  # made live a moment ago; its release is recorded when run_ingest returns
            expected = f"release {builds[answer.build_id]}."
            assert all(expected in p.text for p in answer.passages), (
                answer.build_id,
                [p.text for p in answer.passages],
            )
            seen.add(answer.build_id)
        writer.join()
    assert max(builds) in seen and len(seen) >= 2


def test_the_nearest_passages_of_other_builds_do_not_crowd_out_the_live_ones(
    index_settings: MakeSettings, tmp_path: Path
) -> None:
    """Sixty pages about router lights leave; the records of the previous build (still kept for
    rollback) are the nearest to the question, yet only the live build's pages answer it."""
    settings = index_settings()
    docs = tmp_path / "kb"
    docs.mkdir()
    for page in range(60):
        (docs / f"lights-{page}.md").write_text(
            f"# Router lights {page}\n\nA blinking red light on router model R{page} means it lost the line.\n"
        )
    (docs / "billing.md").write_text("# Billing\n\nBills are sent on the first of the month.\n")
    (docs / "moving.md").write_text("# Moving\n\nTell us four weeks before you move house.\n")
    run_ingest(settings)
    for page in range(60):
        (docs / f"lights-{page}.md").unlink()
    run_ingest(settings)
    with retriever(settings) as found:
        answer = found.retrieve_sync("what does a blinking red light on my router mean", k=5)
    assert {p.source for p in answer.passages} == {"billing.md", "moving.md"}


def test_a_server_starting_while_an_ingest_writes_says_why_and_loads_once_it_is_done(
    kb_index: Path, shared_data_dir: Path, encoder: QueryEncoder
) -> None:
    settings = Settings(_env_file=None, data_dir=shared_data_dir, index_dir=kb_index)
    found = Retriever(settings, encoder)
    with store_lock(kb_index, exclusive=True, wait_seconds=0):  # as an ingest holds it to write
        found.load()
    assert not found.ready
    assert found.error == "an ingest is writing the index; it will be loaded when it is done"
    found.load()
    try:
        assert found.ready and found.error is None
    finally:
        found.close()
