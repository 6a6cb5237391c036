"""`make eval DOCS=<dir> QUESTIONS=<file.jsonl>…`: measure the product's own retrieval on a question set.

Builds an index of DOCS with the real ingest (cached under DATA_DIR/eval, keyed by the documents'
content, so a re-run reuses it), runs the server's retrieval on every question, lists the misses,
shows why questions abstained (each signal's push), the abstention figures on held-out questions,
and prints one JSON object of metrics as its last line.

A question line: {"question": ..., "expected_source": <file name or null>, "also_ok": [names]}.
null means the documents do not answer it and the right behaviour is to abstain.

More document sets: repeat `--docs DIR --questions FILE…` (questions go with the docs before them);
the last line is then one object of metrics per set. `--fit` refits the abstention model on every
question given and prints it (`--write FILE` writes it, for ABSTENTION_MODEL); `--why` lists each
question's signals; `--ablation` shows what each signal adds on held-out questions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.knowledge.abstention import SIGNALS, AbstentionModel
from app.knowledge.abstention_fit import (
    Example,
    Scores,
    cosine_threshold,
    fit,
    held_out,
    signals_model,
)
from app.knowledge.embedding import query_encoder_for
from app.knowledge.retrieval import Retrieval, Retriever
from app.settings import Settings, load_settings
from ingest.pipeline import run_ingest

RANKS = 30  # passages fetched per question: enough for five distinct documents


@dataclass(frozen=True)
class Question:
    text: str
    expected: frozenset[str]  # empty: unanswerable

    @classmethod
    def parse(cls, line: str) -> Question:
        data = json.loads(line)
        names = [data["expected_source"], *data.get("also_ok", [])] if data.get("expected_source") else []
        return cls(str(data["question"]), frozenset(names))


@dataclass(frozen=True)
class Result:
    question: Question
    retrieval: Retrieval


def read_questions(files: Sequence[Path]) -> list[Question]:
    return [Question.parse(line) for file in files for line in file.read_text().splitlines() if line.strip()]


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


def run(settings: Settings, docs: Path, questions: Sequence[Question]) -> tuple[list[Result], AbstentionModel]:
    """The server's retrieval of every question over an index of `docs`, and the abstention model it used."""
    eval_settings = build_index(settings, docs)
    retriever = Retriever(eval_settings, query_encoder_for(eval_settings))
    retriever.load()
    if not retriever.ready:
        raise LookupError(f"index not usable: {retriever.error}")
    try:
        retriever.retrieve_sync(questions[0].text)  # warm-up, not measured
        return [Result(q, retriever.retrieve_sync(q.text, k=RANKS)) for q in questions], retriever.abstention
    finally:
        retriever.close()


def source_ranking(retrieval: Retrieval) -> list[str]:
    ranking: list[str] = []
    for passage in retrieval.passages:
        if passage.source not in ranking:
            ranking.append(passage.source)
    return ranking


def matches(source: str, names: frozenset[str]) -> bool:
    return source in names or source.rsplit("/", 1)[-1] in names


def rank(result: Result) -> int | None:
    """Where the expected document comes in the ranking (None: not in it)."""
    ranking = source_ranking(result.retrieval)
    return next((n for n, source in enumerate(ranking, 1) if matches(source, result.question.expected)), None)


def metrics(results: Sequence[Result]) -> dict[str, float]:
    ranks = [rank(r) for r in results if r.question.expected]
    latencies = [r.retrieval.seconds for r in results]
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    scores = Scores.of([r.retrieval.abstain for r in results], [not r.question.expected for r in results])

    def hit(k: int) -> float:
        return round(sum(1 for r in ranks if r is not None and r <= k) / max(len(ranks), 1), 4)

    return {
        "n": len(results),
        "hit@1": hit(1),
        "hit@3": hit(3),
        "hit@5": hit(5),
        "mrr": round(sum(1 / r for r in ranks if r) / max(len(ranks), 1), 4),
        "abstain_precision": round(scores.precision, 4),
        "abstain_recall": round(scores.recall, 4),
        "abstain_f1": round(scores.f1, 4),
        "p50_ms": round(quantiles[49] * 1000, 2),
        "p95_ms": round(quantiles[94] * 1000, 2),
    }


def misses(results: Sequence[Result], model: AbstentionModel) -> list[str]:
    """Answerable questions not ranked first or abstained on, and unanswerable ones answered; a wrong
    abstention decision comes with its signals."""
    found: list[str] = []
    for result in results:
        question, retrieval = result.question, result.retrieval
        ranking = source_ranking(retrieval)
        signals = f"\n{'':>18}{_pushes(result, model)}"
        wanted = f"{question.text!r} → want {min(question.expected, default='')}, got {ranking[:3]}"
        place = rank(result)
        if question.expected and retrieval.abstain:
            found.append(f"{f'abstained {retrieval.unanswerable:.2f}':>16}  {wanted}{signals}")
        elif question.expected and place != 1:
            found.append(f"{'rank ' + (str(place) if place else '>' + str(len(ranking))):>16}  {wanted}")
        elif not question.expected and not retrieval.abstain:
            answered = f"{question.text!r} (unanswerable) → got {ranking[:2]}"
            found.append(f"{f'answered {retrieval.unanswerable:.2f}':>16}  {answered}{signals}")
    return found


def _pushes(result: Result, model: AbstentionModel) -> str:
    """The signals of one question, each with its push towards abstaining (+) or answering (−)."""
    pushes = model.contributions(result.retrieval.signals)
    values = dict(zip(SIGNALS, result.retrieval.signals.values(), strict=True))
    return "  ".join(f"{name} {values[name]:.2f} ({pushes[name]:+.2f})" for name in SIGNALS)


def why(results: Sequence[Result], model: AbstentionModel) -> list[str]:
    """Every question: the decision, the probability that the documents don't answer, and the pushes."""
    lines = [f"each signal's value (its push towards abstaining, log-odds), from {model.bias:+.2f} at the centre:"]
    for result in results:
        decision = "abstain" if result.retrieval.abstain else "answer"
        expected = "unanswerable" if not result.question.expected else "answerable"
        lines.append(f"  {decision:>7} {result.retrieval.unanswerable:.2f} ({expected}) {result.question.text!r}")
        lines.append(f"          {_pushes(result, model)}")
    return lines


def signal_table(results: Sequence[Result], model: AbstentionModel) -> list[str]:
    """Per signal: its weight, and its mean value and push over answerable and unanswerable questions."""
    groups = {
        "answerable": [r for r in results if r.question.expected],
        "unanswerable": [r for r in results if not r.question.expected],
    }
    lines = [f"abstention signals (threshold {model.threshold:.3f} on the probability; push in log-odds, + abstain):"]
    lines.append(f"  {'signal':<11}{'weight':>8}" + "".join(f"  {name:>25}" for name in groups if groups[name]))
    for n, name in enumerate(SIGNALS):
        cells = []
        for members in (m for m in groups.values() if m):
            value = statistics.fmean(r.retrieval.signals.values()[n] for r in members)
            push = statistics.fmean(model.contributions(r.retrieval.signals)[name] for r in members)
            cells.append(f"  {f'{value:.3f} (push {push:+.2f})':>25}")
        lines.append(f"  {name:<11}{model.weights[name]:>8.3f}" + "".join(cells))
    return lines


def held_out_table(examples: Sequence[Example], ablation: bool) -> tuple[list[str], dict[str, dict[str, float]]]:
    """F1 of abstention on questions each decision was not fitted on: the signals model against the
    old rule (one cosine threshold, refitted the same way), and with each signal left out."""
    deciders = {"signals": signals_model(), "cosine only": cosine_threshold}
    if ablation:
        deciders |= {f"without {name}": signals_model([s for s in SIGNALS if s != name]) for name in SIGNALS}
    table = {label: held_out(examples, decider) for label, decider in deciders.items()}
    groups = [g for g in table["signals"] if table["signals"][g].true + table["signals"][g].missed]
    lines = [f"abstention on held-out questions ({len(examples)}; each decision refitted without the fifth it scores):"]
    for label, scores in table.items():
        cells = "  ".join(
            f"{group}: F1 {scores[group].f1:.3f} (P {scores[group].precision:.2f} R {scores[group].recall:.2f})"
            for group in groups
        )
        lines.append(f"  {label:<20} {cells}")
    figures = {
        group: {
            "heldout_abstain_f1": round(table["signals"][group].f1, 4),
            "heldout_cosine_f1": round(table["cosine only"][group].f1, 4),
        }
        for group in groups
    }
    return lines, figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m app.knowledge.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path, action="append", required=True, help="folder of documents to index")
    parser.add_argument(
        "--questions", type=Path, nargs="+", action="append", required=True, help="JSONL question files for --docs"
    )
    parser.add_argument("--fit", action="store_true", help="refit the abstention model on these questions and print it")
    parser.add_argument("--write", type=Path, help="with --fit: write the model here (for ABSTENTION_MODEL)")
    parser.add_argument("--why", action="store_true", help="list every question's signals and their pushes")
    parser.add_argument("--ablation", action="store_true", help="held-out F1 with each signal left out")
    parser.add_argument(
        "--min",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="fail (exit 1) if METRIC falls below VALUE, e.g. --min hit@3=0.98; repeatable",
    )
    args = parser.parse_args()
    if len(args.docs) != len(args.questions):
        sys.exit("give --questions after each --docs")
    if args.write and not args.fit:
        sys.exit("--write goes with --fit")
    settings = load_settings()
    by_set: dict[str, dict[str, float]] = {}
    examples: list[Example] = []
    for docs, files in zip(args.docs, args.questions, strict=True):
        if not docs.is_dir():
            sys.exit(f"{docs} is not a folder of documents")
        questions = read_questions(files)
        try:
            results, model = run(settings, docs, questions)
        except LookupError as exc:
            sys.exit(str(exc))
        found = misses(results, model)
        print(f"misses ({len(found)}):")
        for miss in found:
            print(f"  {miss}")
        if args.why:
            print("\n".join(why(results, model)))
        print("\n".join(signal_table(results, model)))
        by_set[str(docs)] = metrics(results)
        examples += [Example(r.question.text, str(docs), r.retrieval.signals, not r.question.expected) for r in results]
    try:
        lines, figures = held_out_table(examples, args.ablation)
    except ValueError as exc:  # no unanswerable questions (or only those): nothing to judge abstention on
        lines, figures = [f"abstention not judged on held-out questions: {exc}"], {}
    print("\n".join(lines))
    for name, extra in figures.items():
        by_set[name] |= extra
    if args.fit:
        files = ", ".join(str(f) for group in args.questions for f in group)
        unanswerable = sum(e.unanswerable for e in examples)
        model = fit(examples, f"{len(examples)} questions ({unanswerable} unanswerable): {files}")
        print(f"abstention model fitted on every question given:\n{model.to_json()}")
        if args.write:
            args.write.write_text(model.to_json() + "\n", encoding="utf-8")
            print(f"written to {args.write}: set ABSTENTION_MODEL={args.write} to use it")
    failed = [
        f"{name}: {metric} {values.get(metric, 'not measured')} < {floor}"
        for name, values in by_set.items()
        for metric, floor in (item.split("=", 1) for item in args.min)
        if values.get(metric, float("-inf")) < float(floor)
    ]
    for failure in failed:
        print(f"below the floor: {failure}", file=sys.stderr)
    print(json.dumps(next(iter(by_set.values())) if len(by_set) == 1 else by_set))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
