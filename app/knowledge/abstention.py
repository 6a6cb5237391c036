"""Whether the documents answer a question: a small logistic model over signals of the retrieval itself.

Every signal comes from what retrieval already fetched (the nearest passages by meaning, the keyword
scores, the passage ranked first), so deciding costs no request and no model. The model's answer is
the probability that the documents do not answer the question; at or above `threshold`, the agent says
it doesn't know (no sentence read out, no passages handed to the model as if they answered) and the
question becomes a knowledge gap.

The shipped coefficients are refitted with `make eval … ARGS=--fit` (see `abstention_fit.py`); a
company's own fit is written to a file and named by `ABSTENTION_MODEL`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from operator import attrgetter
from pathlib import Path


@dataclass(frozen=True)
class Signals:
    """What one retrieval says about how well the documents match the question."""

    similarity: float  # cosine of the passage nearest in meaning
    margin: float  # that cosine minus the nearest passage of another document
    coverage: float  # share of the question's terms found in the passage ranked first
    agreement: float  # 1 when meaning and keywords put the same document first, else 0
    standout: float  # how far the nearest passage stands above the other candidates, in standard deviations

    def values(self) -> tuple[float, ...]:
        """The signals in the order of SIGNALS."""
        return _VALUES(self)


SIGNALS: tuple[str, ...] = tuple(f.name for f in fields(Signals))
_VALUES = attrgetter(*SIGNALS)


@dataclass(frozen=True)
class AbstentionModel:
    """log-odds(unanswerable) = bias + Σ weight × (signal − centre); abstain at `threshold` or above."""

    weights: dict[str, float]
    centre: dict[str, float]  # the signals of an average question of the data it was fitted on
    bias: float  # log-odds of a question whose signals are all at the centre
    threshold: float
    fitted_on: str  # the data the coefficients came from

    def contributions(self, signals: Signals) -> dict[str, float]:
        """Each signal's push towards abstaining (positive) or answering (negative), in log-odds."""
        return {
            name: self.weights[name] * (value - self.centre[name]) + 0.0  # + 0.0: a weight of 0 pushes 0, not -0
            for name, value in zip(SIGNALS, signals.values(), strict=True)
        }

    def probability(self, signals: Signals) -> float:
        """The probability that the documents don't answer, for a question set where half do not."""
        z = self.bias + sum(self.contributions(signals).values())
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def to_json(self) -> str:
        signals = {name: {"weight": self.weights[name], "centre": self.centre[name]} for name in SIGNALS}
        return json.dumps(
            {"signals": signals, "bias": self.bias, "threshold": self.threshold, "fitted_on": self.fitted_on},
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> AbstentionModel:
        """A model written by `make eval … ARGS="--fit --write FILE"`; ValueError says what is wrong."""
        try:
            data = json.loads(text)
            signals = data["signals"]
            weights = {name: float(signals[name]["weight"]) for name in SIGNALS}
            centre = {name: float(signals[name]["centre"]) for name in SIGNALS}
            model = cls(weights, centre, float(data["bias"]), float(data["threshold"]), str(data.get("fitted_on", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not an abstention model (expected the JSON `--fit --write` writes): {exc!r}") from exc
        numbers = [*weights.values(), *centre.values(), model.bias]
        if not all(math.isfinite(n) for n in numbers) or not 0.0 < model.threshold < 1.0:
            raise ValueError("an abstention model needs finite coefficients and a threshold between 0 and 1")
        return model


def load_model(path: Path | None) -> AbstentionModel:
    """The model in `path` (ABSTENTION_MODEL), or the shipped one."""
    if path is None:
        return SHIPPED
    try:
        return AbstentionModel.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


# Fitted by `make fit-abstention` on the help-center and stackfaq eval sets (their questions plus this
# repository's tests/eval/*_unanswerable.jsonl) and on the sample knowledge base's questions
# (tests/eval/knowledge_questions.jsonl); see README, "Knowing when the documents don't answer".
SHIPPED = AbstentionModel(
    weights={
        "similarity": -14.9727,
        "margin": 0.0,
        "coverage": 0.0,
        "agreement": -1.0203,
        "standout": -0.4166,
    },
    centre={
        "similarity": 0.5336,
        "margin": 0.0924,
        "coverage": 0.4063,
        "agreement": 0.3915,
        "standout": 3.0399,
    },
    bias=-0.1366,
    threshold=0.5971,
    fitted_on=(
        "1491 questions (124 unanswerable): ../shared/eval/helpcenter/questions.jsonl, "
        "tests/eval/helpcenter_unanswerable.jsonl, ../shared/eval/stackfaq/questions.jsonl, "
        "tests/eval/stackfaq_unanswerable.jsonl, tests/eval/knowledge_questions.jsonl"
    ),
)
