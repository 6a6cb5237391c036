"""`make eval DOCS=<dir> QUESTIONS=<file.jsonl>`: measure the product's own retrieval on a question set.

Builds an index of DOCS with the real ingest (cached under DATA_DIR/eval, keyed by the documents'
content, so a re-run reuses it), runs the server's retrieval on every question, lists the misses,
and prints one JSON object of metrics as its last line.

A question line: {"question": ..., "expected_source": <file name or null>, "also_ok": [names]}.
null means the documents do not answer it and the right behaviour is to abstain.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from app.knowledge.embedding import query_encoder_for
from app.knowledge.retrieval import ABSTAIN_BELOW, Retrieval, Retriever
from app.settings import Settings, load_settings
from ingest.pipeline import run_ingest

RANKS = 30  # passages fetched per question: enough for five distinct documents


@dataclass(frozen=True)
class Question:
    text: str
    expected: frozenset[str]  # empty: unranks

    @classmethod
    def parse(cls, line: str) -> Question:
        data = json.loads(line)
        names = [data["expected_source"], *data.get("also_ok", [])] if data.get("expected_source") else []
        return cls(str(data["question"]), frozenset(names))


def corpus_key(docs: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in docs.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(docs)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def build_index(settings: Settings, docs: Path) -> Settings:
    """The index of `docs`, built with the real ingest once per content (a re-run is a no-op)."""
    index_dir = settings.data_dir / "eval" / corpus_key(docs)
    eval_settings = settings.model_copy(update={"index_dir": index_dir, "chroma_host": None})
    report = run_ingest(eval_settings, docs)
    print(f"index of {docs}: {report.chunks} passages (embedded {report.embedded}, reused {report.reused})")
    return eval_settings


def source_ranking(retrieval: Retrieval) -> list[str]:
    ranking: list[str] = []
    for passage in retrieval.passages:
        if passage.source not in ranking:
            ranking.append(passage.source)
    return ranking


def matches(source: str, names: frozenset[str]) -> bool:
    return source in names or source.rsplit("/", 1)[-1] in names


def evaluate(retriever: Retriever, questions: list[Question], threshold: float) -> tuple[dict[str, float], list[str]]:
    ranks: list[int | None] = []
    latencies: list[float] = []
    abstained: list[bool] = []
    misses: list[str] = []
    results: list[tuple[Question, Retrieval]] = []
    for question in questions:
        retrieval = retriever.retrieve_sync(question.text, k=RANKS)
        results.append((question, retrieval))
        latencies.append(retrieval.seconds)
        abstain = retrieval.best_similarity < threshold
        abstained.append(abstain)
        ranking = source_ranking(retrieval)
        if question.expected:
            rank = next((n for n, source in enumerate(ranking, 1) if matches(source, question.expected)), None)
            ranks.append(rank)
            if rank != 1 or abstain:
                why = "abstained" if abstain else f"rank {rank or '>' + str(len(ranking))}"
                misses.append(f"{why:>10}  {question.text!r} → want {sorted(question.expected)[0]}, got {ranking[:3]}")
        elif not abstain:
            misses.append(f"{'answered':>10}  {question.text!r} (unranks) → got {ranking[:2]}")
    n_null = sum(1 for q in questions if not q.expected)
    true_abstain = sum(1 for q, a in zip(questions, abstained, strict=True) if a and not q.expected)
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99

    def hit(k: int) -> float:
        return round(sum(1 for r in ranks if r is not None and r <= k) / max(len(ranks), 1), 4)

    metrics = {
        "n": len(questions),
        "hit@1": hit(1),
        "hit@3": hit(3),
        "hit@5": hit(5),
        "mrr": round(sum(1 / r for r in ranks if r) / max(len(ranks), 1), 4),
        "abstain_precision": round(true_abstain / sum(abstained), 4) if sum(abstained) else 1.0,
        "abstain_recall": round(true_abstain / n_null, 4) if n_null else 1.0,
        "p50_ms": round(quantiles[49] * 1000, 2),
        "p95_ms": round(quantiles[94] * 1000, 2),
    }
    return metrics, misses


def sweep(retriever: Retriever, questions: list[Question]) -> None:
    """Abstention F1 by threshold, to calibrate ABSTAIN_BELOW."""
    best = {q.text: retriever.retrieve_sync(q.text, k=RANKS).best_similarity for q in questions}
    for step in range(20, 61, 2):
        threshold = step / 100
        tp = sum(1 for q in questions if not q.expected and best[q.text] < threshold)
        fp = sum(1 for q in questions if q.expected and best[q.text] < threshold)
        fn = sum(1 for q in questions if not q.expected and best[q.text] >= threshold)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        print(f"threshold {threshold:.2f}: abstain tp {tp:3d} fp {fp:3d} fn {fn:3d}  F1 {f1:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m app.knowledge.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path, required=True, help="folder of documents to index")
    parser.add_argument("--questions", type=Path, required=True, help="JSONL question set")
    parser.add_argument("--threshold", type=float, default=ABSTAIN_BELOW, help="abstain below this similarity")
    parser.add_argument("--sweep", action="store_true", help="print abstention F1 for a range of thresholds")
    parser.add_argument(
        "--min",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="fail (exit 1) if METRIC falls below VALUE, e.g. --min hit@3=0.98; repeatable",
    )
    args = parser.parse_args()
    if not args.docs.is_dir():
        sys.exit(f"{args.docs} is not a folder of documents")
    questions = [Question.parse(line) for line in args.questions.read_text().splitlines() if line.strip()]
    settings = build_index(load_settings(), args.docs)
    retriever = Retriever(settings, query_encoder_for(settings))
    retriever.load()
    if not retriever.ready:
        sys.exit(f"index not usable: {retriever.error}")
    retriever.retrieve_sync(questions[0].text)  # warm-up, not measured
    if args.sweep:
        sweep(retriever, questions)
    metrics, misses = evaluate(retriever, questions, args.threshold)
    print(f"misses ({len(misses)}):")
    for miss in misses:
        print(f"  {miss}")
    retriever.close()
    failed = [
        f"{name} {metrics[name]} < {floor}"
        for name, floor in (item.split("=", 1) for item in args.min)
        if metrics[name] < float(floor)
    ]
    for failure in failed:
        print(f"below the floor: {failure}", file=sys.stderr)
    print(json.dumps(metrics))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
